"""One house under one name: the wheel installs negforge.* only, never generic top-level packages."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT


def test_the_wheel_installs_only_the_negforge_package(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    if done.returncode and "No module named" in done.stderr:
        pytest.skip(f"cannot build a wheel here: {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr[-2000:]
    wheel = next(tmp_path.glob("negforge-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"negforge"}, top_level
    for package in ("flows", "tasks", "schemas"):
        assert any(name.startswith(f"negforge/{package}/") and name.endswith(".py") for name in names), package
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "negforge = negforge.flows.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_no_module_imports_the_old_generic_names():
    """Code that imported `flows`/`tasks`/`schemas` would load a second copy of a module (or a user's own)."""
    offenders = []
    for path in [*ROOT.glob("flows/*.py"), *ROOT.glob("tasks/*.py"), *ROOT.glob("schemas/*.py"),
                 *ROOT.glob("tests/*.py"), *ROOT.glob("bench/*.py")]:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            stripped = line.strip()
            if stripped.startswith(("from flows", "from tasks", "from schemas", "import flows", "import tasks",
                                    "import schemas")):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {stripped}")
    assert not offenders, offenders

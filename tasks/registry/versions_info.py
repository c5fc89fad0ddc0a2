"""What produced a version: the code version and the versions of the packages that shape its data."""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

PACKAGES = ("negforge", "prefect", "prefect-dask", "distributed", "polars", "faiss-cpu", "sentence-transformers",
            "transformers", "torch", "datasets", "numpy", "great-expectations", "pydantic")


@lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of the checkout negforge runs from, else the installed package's version."""
    try:
        done = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=5)
        sha = done.stdout.strip() if done.returncode == 0 else ""
    except OSError:
        sha = ""
    return sha or f"negforge {metadata.version('negforge')}"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions

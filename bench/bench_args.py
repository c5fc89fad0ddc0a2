"""Shared by the benchmarks: their command-line arguments (where SciFact is, where to work) and a timed build."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "deployments" / "datasets" / "scifact-demo.yaml"


def absolute_path(text: str) -> Path:
    return Path(text).expanduser().resolve()


def parser(description: str, work: str = "/tmp/negforge-bench") -> argparse.ArgumentParser:
    """A parser with --data (SciFact in BEIR layout) and --work (a scratch folder), both made absolute; a
    benchmark adds its own options."""
    arguments = argparse.ArgumentParser(description=description)
    arguments.add_argument("--data", type=absolute_path, default=ROOT.parent / "shared" / "data" / "scifact")
    arguments.add_argument("--work", type=absolute_path, default=Path(work))
    return arguments


def data_and_work(description: str) -> tuple[Path, Path]:
    """Parse --data and --work only."""
    args = parser(description).parse_args()
    return args.data, args.work


def timed_build(overrides: list[str], what: str, refusals: bool = False) -> tuple[dict | None, float, str]:
    """One `negforge build` of the demo config with `--set` overrides, in a fresh process: its manifest, wall
    seconds and ""; a failed build stops the benchmark, naming `what`. With `refusals`, a candidate the quality gate
    refused (exit 1, "failed validation") gives (None, seconds, the gate's message) instead."""
    command = [sys.executable, "-m", "negforge.flows.cli", "build", "--config", str(DEMO_CONFIG)]
    for override in overrides:
        command += ["--set", override]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    refused = "negforge: error: the candidate version failed validation"
    if refusals and done.returncode == 1 and refused in done.stderr:
        return None, seconds, " ".join(done.stderr[done.stderr.index(refused):].split())
    if done.returncode:
        raise SystemExit(f"{what}: negforge build failed:\n{done.stderr[-3000:]}")
    return json.loads((Path(done.stdout.strip().splitlines()[-1]) / "manifest.json").read_text()), seconds, ""

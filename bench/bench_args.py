"""Command-line arguments shared by the benchmarks: where SciFact is and where to work."""

from __future__ import annotations

import argparse
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

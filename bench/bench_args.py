"""Command-line arguments shared by the benchmarks: where SciFact is and where to work."""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "deployments" / "datasets" / "scifact-demo.yaml"


def data_and_work(description: str) -> tuple[Path, Path]:
    """Parse --data (SciFact in BEIR layout) and --work (a scratch folder), both made absolute."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "scifact")
    parser.add_argument("--work", type=Path, default=Path("/tmp/negforge-bench"))
    args = parser.parse_args()
    return args.data.resolve(), args.work.resolve()

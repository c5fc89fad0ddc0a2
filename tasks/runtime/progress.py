"""Progress from inside long tasks: each task writes how far it is to a small file the flow reads while it waits.

Files (not Prefect API calls from workers) so that it works the same on a local cluster and on an external Dask
cluster sharing the workdir, and so that many tasks never race on one artifact: the flow sums them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

MIN_INTERVAL_S = 0.5


class TaskProgress:
    """Written by one task: `advance(n)` as units of work complete (rate-limited; the last update always lands)."""

    def __init__(self, folder: str | Path, name: str, total: int) -> None:
        self.path = Path(folder) / f"{name}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.total, self.done, self._written_at = total, 0, 0.0
        self._write()

    def advance(self, units: int) -> None:
        self.done += units
        if self.done >= self.total or time.monotonic() - self._written_at >= MIN_INTERVAL_S:
            self._write()

    def _write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"done": self.done, "total": self.total}, allow_nan=False))
        os.replace(tmp, self.path)
        self._written_at = time.monotonic()


def units_done(folder: str | Path) -> int:
    """The sum of what every task writing into `folder` has reported (a task run again starts from zero)."""
    done = 0
    for path in Path(folder).glob("*.json") if Path(folder).exists() else []:
        try:
            done += json.loads(path.read_text())["done"]
        except (OSError, ValueError, KeyError):
            continue  # a file being replaced: read it next time
    return done

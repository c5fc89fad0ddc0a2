"""Progress of a stage whose tasks run on Dask: the Prefect UI's progress artifact, and what the CLI shows.

The tasks write how far they are (tasks/runtime/progress.py); while the flow waits for them it sums those files and
moves the artifact. On a terminal the CLI shows one bar per stage; off a terminal (CI, cron, a served run's log) it logs
a line every ~10% or 30 s instead of one per task run.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture, wait

from negforge.flows.orchestration.artifact_keys import slug
from negforge.tasks.runtime.progress import units_done

POLL_S = 0.5
LOG_EVERY_S = 30.0
LOG_EVERY_FRACTION = 0.1


class StageProgress:
    """Follows one stage's task runs to their end, showing their progress."""

    def __init__(self, dataset: str, stage: str, total: int, folder: str) -> None:
        self.stage, self.total, self.folder = stage, max(1, total), folder
        self.artifact = create_progress_artifact(0.0, key=f"{slug(dataset)}-{slug(stage)}",
                                                  description=f"{stage}: starting")
        self.bar = _terminal_bar(stage, self.total)
        self.logged_fraction, self.logged_at = 0.0, time.monotonic()
        self.shown = -1.0

    def results(self, futures: list[PrefectFuture]) -> list[Any]:
        """Wait for every future, updating the progress as their tasks report it; their results in order."""
        pending = list(futures)
        while pending:
            pending = list(wait(pending, timeout=POLL_S).not_done)
            self._show(units_done(self.folder) if pending else self.total)
        if self.bar is not None:
            self.bar.close()
        return [future.result() for future in futures]

    def _show(self, done: int) -> None:
        fraction = min(1.0, done / self.total)
        if fraction == self.shown:
            return
        self.shown = fraction
        update_progress_artifact(self.artifact, 100 * fraction, description=f"{self.stage}: {fraction:.0%}")
        if self.bar is not None:
            self.bar.n = min(done, self.total)
            self.bar.refresh()
        elif (fraction - self.logged_fraction >= LOG_EVERY_FRACTION or fraction == 1.0
              or time.monotonic() - self.logged_at >= LOG_EVERY_S):
            get_run_logger().info("%s: %.0f%%", self.stage, 100 * fraction)
            self.logged_fraction, self.logged_at = fraction, time.monotonic()


def _terminal_bar(stage: str, total: int):
    """A tqdm bar on stderr when stderr is a terminal (the CLI run by a person), else None."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=stage, unit="", unit_scale=True, leave=True, file=sys.stderr,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")

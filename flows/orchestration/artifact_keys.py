"""Prefect artifact keys: the run report, progress and evaluation artifacts are keyed by their dataset's name."""

from __future__ import annotations

import re


def slug(dataset: str) -> str:
    """A dataset name as artifact keys allow it: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", dataset.lower()).strip("-") or "dataset"

"""Console and log lines escaped in every process that runs negforge code: the CLI, a served or work-pool flow run,
local and remote Dask workers.

Their lines carry user data (file names, ids, rejected rows, texts quoted by an error), and a worker's console is the
run's terminal (local workers write to the CLI's stderr) or a cluster's log. Escaping where negforge formats a message
(schemas/console_text.py) misses what Prefect, Dask and libraries write about a task: a failed task run's message, a
warning. So every stream handler of the process (Prefect's console handler is one, Dask's another) and every warning
printed writes control characters as repr writes them. The Prefect API handler is no stream handler: the UI keeps
each record whole.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from negforge.schemas.console_text import printable_lines

_format = logging.StreamHandler.format
_formatwarning = warnings.formatwarning
_tracebacks = [True]


def _escaped_line(handler: logging.StreamHandler, record: logging.LogRecord) -> str:
    if not _tracebacks[0]:
        record = logging.makeLogRecord(record.__dict__ | {"exc_info": None, "exc_text": None})
    return printable_lines(_format(handler, record))


def _escaped_warning(*args: Any, **kwargs: Any) -> str:
    return printable_lines(_formatwarning(*args, **kwargs))


def escape_console_lines(tracebacks: bool | None = None) -> None:
    """Make this process's stream handlers and printed warnings write control characters escaped (idempotent).

    Args:
        tracebacks: whether stream handlers show a record's traceback (the CLI: only with --debug; its failed runs'
            message lines say what went wrong); None keeps the process's choice (at first: shown).
    """
    if tracebacks is not None:
        _tracebacks[0] = tracebacks
    logging.StreamHandler.format = _escaped_line  # type: ignore[method-assign]
    warnings.formatwarning = _escaped_warning

"""Permanent OS errors: the ones a second try cannot mend (not a folder, read-only, no permission, no space), never
retried, and reported in one line that names the path.

A disk that fills during a run (what no preflight check can foresee) ends this way: `naming` gives the error the
path being written where the library that failed named none.
"""

from __future__ import annotations

import errno
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PERMANENT_ERRNOS = {errno.ENOTDIR, errno.EISDIR, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC,
                    errno.EDQUOT, errno.ELOOP}  # ELOOP: a symlink where negforge opens without following one
_NUMBER_IN_MESSAGE = re.compile(r"\(os error (\d+)\)|\[Errno (\d+)\]")


def os_errno(error: BaseException) -> int | None:
    """The OS error number of an OSError: its errno, else the one its message carries. polars reports its Rust I/O
    errors as `OSError('No space left on device (os error 28)')`, shutil.copytree its failed copies as a list of
    `[Errno 28] ...` lines: neither sets errno, so a full disk read as a transient error, was retried and ended in a
    traceback."""
    if not isinstance(error, OSError):
        return None
    if error.errno is not None:
        return error.errno
    found = _NUMBER_IN_MESSAGE.search(str(error))
    return int(found.group(1) or found.group(2)) if found else None


def permanent(error: BaseException) -> bool:
    """Whether an error is an OS error that retrying cannot fix (not a folder, read-only, permission, no space)."""
    return os_errno(error) in PERMANENT_ERRNOS


@contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """Name `path`, the folder being written, in a permanent OS error that names no file: a full disk reported by a
    buffered write's flush, by polars or by shutil.copytree says only `[Errno 28] No space left on device`, and the
    user must know which disk to free."""
    try:
        yield
    except OSError as error:
        code = os_errno(error)
        if code not in PERMANENT_ERRNOS or error.filename is not None:
            raise
        raise OSError(code, os.strerror(code), str(path)) from error


def describe(error: OSError) -> str:
    """One line for an OS error: the path(s) it concerns and what went wrong."""
    paths = " -> ".join(str(p) for p in (error.filename, error.filename2) if p is not None)
    return f"{paths}: {error.strerror}" if paths else str(error)

"""Containment: negforge reads, writes and deletes only inside `runtime.workdir` and `publish.registry`, whatever
links a user or another program put there.

A symbolic link where negforge keeps its own folders and files (`runs/`, `embeddings/` and a fingerprint's folder,
`lexical/` and an index folder, a dataset folder, its `LATEST`, `.lock` and `evaluations/`) is never followed: what
it points to lies outside, and writing through it would change, or a later `gc` delete, someone else's files. Nor is
it removed or replaced: it was put there on purpose (a store moved to another disk, say), and removing it could
break that setup. A command that would use one stops before reading or writing anything through it, in one line
naming it (exit 2, never retried: ELOOP, as the kernel reports a link opened without following). The roots
themselves may be links: the user chose them. `gc` reports such links as not removed and goes on; `versions verify`
names them as damage.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

NOT_FOLLOWED = ("a symlink, which negforge does not follow: it reads and writes only inside runtime.workdir and "
                "publish.registry (put what the link points to in its place, or remove the link)")


def refuse_link(path: Path) -> Path:
    """`path`, unless it is a symbolic link (OSError ELOOP naming it); it need not exist."""
    if path.is_symlink():
        raise OSError(errno.ELOOP, NOT_FOLLOWED, str(path))
    return path


def inside(root: str | Path, *names: str, entries: bool = False) -> Path:
    """`root/names...`, refused when it or a folder between `root` (itself not checked) and it is a symbolic link,
    or, with `entries`, when anything under it is one. What does not exist yet is not refused."""
    path = Path(root)
    for name in names:
        path = refuse_link(path / name)
    if entries and path.is_dir():
        for parent, folders, files in os.walk(path):  # followlinks=False: a linked folder is listed, never entered
            for name in folders + files:
                refuse_link(Path(parent, name))
    return path

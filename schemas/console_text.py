"""How user data is shown on a console or in a log line: control characters escaped, long values cut short.

Rows, ids, file names and config values come from users' files. Printed raw, an ESC starts a terminal escape sequence
(colours, cursor moves, a changed window title), a NUL or a lone surrogate garbles or breaks the line, and a 100 KB
value buries the message. It lives in schemas, which imports nothing else of negforge, so the config's errors use it.
"""

from __future__ import annotations

from typing import Any

QUOTE_LIMIT = 80  # characters of a value an error message quotes


def _escaped(character: str) -> str:
    return character if character.isprintable() else character.encode("unicode_escape").decode("ascii")


def printable(text: str) -> str:
    """`text` with every character Python's repr would escape (C0 and C1 controls, DEL, format characters, lone
    surrogates, line breaks) written as repr writes it (`\\x1b`, `\\x00`, `\\n`); other characters unchanged."""
    return text if text.isprintable() else "".join(map(_escaped, text))


def printable_lines(text: str) -> str:
    """A multi-line message (an error listing several fields, a traceback): each line made printable."""
    return "\n".join(printable(line) for line in text.split("\n"))


def shortened(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text` made printable and, when longer than `limit` characters, cut there and followed by its length:
    `aaaa...(100000 characters)`."""
    if len(text) <= limit:
        return printable(text)
    return f"{printable(text[:limit])}...({len(text)} characters)"


def quoted(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """A value as an error message quotes it: its repr, shortened (a string's quotes count)."""
    return shortened(repr(value), limit)

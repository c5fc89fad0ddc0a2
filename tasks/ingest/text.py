"""Text normalization and hashing: the identity of a text for exact-duplicate detection and the embedding store.

The hash is blake2b of the text in Unicode NFC with runs of whitespace collapsed to one space and stripped (the
embedding store is keyed by these values). The whitespace collapse runs on whole columns and only on the texts
that need it; NFC and the hash itself run text by text (CPython's NFC hands back a text already in NFC at once: ten
times faster than pyarrow's or polars' NFC here; whitespace takes part in no canonical composition, so collapsing
first changes nothing).
"""

from __future__ import annotations

import hashlib
import unicodedata
from string import Formatter

import polars as pl

# Python's whitespace (str.isspace, str.strip, re's \s): all of it lies below U+3001.
WHITESPACE = "".join(c for c in map(chr, range(0x3001)) if c.isspace())


def _any_of(chars: str) -> str:
    return "[" + "".join(f"\\x{{{ord(c):x}}}" for c in chars) + "]"


_SPACE_RUN = _any_of(WHITESPACE) + "+"
_NEEDS_COLLAPSE = f"{_any_of(WHITESPACE.replace(' ', ''))}|  |^ | $"  # a space other than ' ', or misplaced


def _collapsed(texts: pl.Series) -> pl.Series:
    """Runs of whitespace as one space, stripped; computed only for the texts that need it."""
    picked = texts.str.contains(_NEEDS_COLLAPSE).arg_true()
    if not picked.len():
        return texts
    return texts.clone().scatter(picked, texts.gather(picked).str.replace_all(_SPACE_RUN, " ").str.strip_chars(" "))


def text_hashes(texts: pl.Series) -> pl.Series:
    """A stable 128-bit hex hash of each normalized text."""
    blake2b, nfc = hashlib.blake2b, unicodedata.normalize
    return pl.Series("text_hash", [blake2b(nfc("NFC", t).encode(), digest_size=16).hexdigest()
                                   for t in _collapsed(texts).to_list()], dtype=pl.String)


def normalize(text: str) -> str:
    """What `text_hashes` hashes: NFC with runs of whitespace collapsed; never the embedded text."""
    return unicodedata.normalize("NFC", _collapsed(pl.Series([text]))[0])


def text_hash(text: str) -> str:
    """`text_hashes` of one text (the embedding store's key)."""
    return text_hashes(pl.Series([text]))[0]


def document_texts(template: str, title: pl.Expr, text: pl.Expr) -> pl.Expr:
    """The text embedded for each document: the template filled with title and text, stripped.

    Raises ValueError for a template that names anything but {title} and {text}, or formats them."""
    parts: list[pl.Expr] = []
    for literal, name, spec, conversion in Formatter().parse(template):
        if literal:
            parts.append(pl.lit(literal))
        if name is None:
            continue
        if name not in ("title", "text") or spec or conversion:
            raise ValueError(f"input.doc_template: {template!r} may only hold {{title}} and {{text}}")
        parts.append(title if name == "title" else text)
    return pl.concat_str(parts or [pl.lit("")]).str.strip_chars(WHITESPACE)

"""Text normalization and hashing: the identity of a text for exact-duplicate detection and the embedding store."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Unicode NFC with runs of whitespace collapsed; only feeds the hash, never the embedded text."""
    return _SPACES.sub(" ", unicodedata.normalize("NFC", text)).strip()


def text_hash(text: str) -> str:
    """A stable 128-bit hex hash of the normalized text."""
    return hashlib.blake2b(normalize(text).encode("utf-8"), digest_size=16).hexdigest()


def document_text(template: str, title: str | None, text: str) -> str:
    """The text embedded for a document: the template filled with title and text, stripped."""
    return template.format(title=title or "", text=text).strip()

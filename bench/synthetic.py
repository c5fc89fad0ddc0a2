"""Seeded synthetic documents and queries recombined from a real BEIR corpus's titles and sentences.

A document takes a random title and as many random sentences as a random real abstract has, so lengths follow the
source corpus. A query is a fragment of two sentences of its positive document with one word dropped, so it is close
to its positive without being a substring of it, and mining has something to find. Every text is unique.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")


@dataclass(frozen=True)
class SentencePool:
    """The parts documents are made of: unique titles and sentences, and the source's sentences per document."""

    titles: list[str]
    sentences: list[str]
    lengths: np.ndarray

    @classmethod
    def read(cls, corpus: Path) -> SentencePool:
        rows = pl.read_ndjson(corpus, schema={"title": pl.String, "text": pl.String})
        split = [[s for s in SENTENCE_END.split(text.strip()) if s] for text in rows["text"]]
        return cls(titles=sorted(set(rows["title"])), sentences=sorted({s for doc in split for s in doc}),
                   lengths=np.array([len(doc) for doc in split if len(doc) >= 2]))


@dataclass(frozen=True)
class Document:
    title: str
    sentences: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.sentences)

    @property
    def embedded(self) -> str:
        """The text both tools embed (negforge's default doc_template, "{title} {text}")."""
        return f"{self.title} {self.text}"


def digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def make_documents(pool: SentencePool, count: int, rng: np.random.Generator,
                   taken: set[bytes] | None = None) -> list[Document]:
    """`count` documents whose embedded texts are unique and not in `taken` (digests; updated in place)."""
    taken = set() if taken is None else taken
    documents: list[Document] = []
    while len(documents) < count:
        need = count - len(documents)
        lengths = rng.choice(pool.lengths, size=need)
        titles = rng.integers(len(pool.titles), size=need)
        picks = np.split(rng.integers(len(pool.sentences), size=int(lengths.sum())), np.cumsum(lengths)[:-1])
        for title, pick in zip(titles, picks):
            document = Document(pool.titles[title], tuple(pool.sentences[i] for i in pick))
            key = digest(document.embedded)
            if key not in taken:
                taken.add(key)
                documents.append(document)
    return documents


def make_query(document: Document, rng: np.random.Generator) -> str:
    """Four to eight words from each of two of the document's sentences, one word dropped, lower case."""
    words: list[str] = []
    for position in sorted(rng.choice(len(document.sentences), size=2, replace=False)):
        sentence = document.sentences[position].split()
        width = int(rng.integers(4, 9))
        start = int(rng.integers(max(len(sentence) - width, 0) + 1))
        words += sentence[start:start + width]
    del words[int(rng.integers(len(words)))]
    return " ".join(words).lower().rstrip(".")


def write_corpus(documents: list[Document], ids: list[str], path: Path) -> None:
    """BEIR corpus.jsonl: _id, title, text."""
    pl.DataFrame({"_id": ids, "title": [d.title for d in documents],
                  "text": [d.text for d in documents]}).write_ndjson(path)


def write_beir(pool: SentencePool, n_docs: int, n_queries: int, seed: int, folder: Path) -> None:
    """A BEIR folder (corpus.jsonl, queries.jsonl, qrels/train.tsv): `n_queries` unique queries, one positive each,
    every positive a distinct document."""
    rng = np.random.default_rng(seed)
    documents = make_documents(pool, n_docs, rng)
    doc_ids = [f"d{i}" for i in range(n_docs)]
    queries, positives, seen = [], [], set()
    for row in rng.choice(n_docs, size=n_queries, replace=False):
        query = make_query(documents[row], rng)
        while query in seen:
            query = make_query(documents[row], rng)
        seen.add(query)
        queries.append(query)
        positives.append(doc_ids[row])
    query_ids = [f"q{i}" for i in range(n_queries)]
    (folder / "qrels").mkdir(parents=True)
    write_corpus(documents, doc_ids, folder / "corpus.jsonl")
    pl.DataFrame({"_id": query_ids, "text": queries}).write_ndjson(folder / "queries.jsonl")
    pl.DataFrame({"query-id": query_ids, "corpus-id": positives, "score": [1] * n_queries}).write_csv(
        folder / "qrels" / "train.tsv", separator="\t")

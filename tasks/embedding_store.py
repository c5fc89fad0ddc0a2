"""A content-addressed embedding store on disk: vectors keyed by (model fingerprint, text hash).

Each write is one parquet part, written under a temporary name and renamed, so a crash loses at most the part being
written and readers never see half a part. A text already stored under a fingerprint is never embedded again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import polars as pl


class EmbeddingStore:
    """The parts of one model fingerprint: `<root>/<fingerprint>/part-<key>.parquet`."""

    def __init__(self, root: str | Path, fingerprint: str) -> None:
        self.folder = Path(root) / fingerprint
        self.folder.mkdir(parents=True, exist_ok=True)

    def _parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet"))

    def _scan(self, hashes: list[str]) -> pl.DataFrame:
        parts = self._parts()
        if not parts:
            return pl.DataFrame(schema={"text_hash": pl.String, "vector": pl.Array(pl.Float32, 1)})
        return (pl.scan_parquet(parts).filter(pl.col("text_hash").is_in(hashes))
                .unique("text_hash", keep="first", maintain_order=True).collect())

    def stored(self, hashes: list[str]) -> set[str]:
        """Which of `hashes` already have a vector."""
        parts = self._parts()
        if not parts:
            return set()
        found = pl.scan_parquet(parts).select("text_hash").filter(pl.col("text_hash").is_in(hashes)).collect()
        return set(found["text_hash"].to_list())

    def put(self, hashes: list[str], vectors: np.ndarray) -> Path:
        """Store vectors as one new part, atomically."""
        key = hashlib.sha256("\n".join(hashes).encode()).hexdigest()[:24]
        path = self.folder / f"part-{key}.parquet"
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        frame = pl.DataFrame({"text_hash": hashes,
                              "vector": pl.Series(vectors, dtype=pl.Array(pl.Float32, vectors.shape[1]))})
        frame.write_parquet(tmp)
        os.replace(tmp, path)
        return path

    def get(self, hashes: list[str]) -> np.ndarray:
        """Vectors of `hashes`, in that order; every hash must be stored."""
        found = self._scan(hashes)
        order = pl.DataFrame({"text_hash": hashes}).join(found, on="text_hash", how="left", maintain_order="left")
        if order["vector"].null_count():
            missing = order.filter(pl.col("vector").is_null())["text_hash"].head(3).to_list()
            raise KeyError(f"{self.folder}: no vector for text hashes {missing}")
        return np.ascontiguousarray(order["vector"].to_numpy(), dtype=np.float32)

"""The candidates kept inside each version (`candidates/`, outside its dataset configs), for re-mining.

They hold every retrieved candidate with its score to the depth searched, the positives and their scores, the used
queries, and the documents those name, with their original row numbers: enough to mine again with other options
without embedding or searching.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import polars as pl

from negforge.schemas.stages import Texts


class RemineError(ValueError):
    """The stored candidates cannot serve the requested options."""


def save_candidates(folder: Path, search: dict[str, str], texts: Texts, depth: int) -> None:
    """Copy what re-mining needs from the run workspace into `folder`."""
    folder.mkdir(parents=True)
    shutil.copy(search["hits"], folder / "hits.parquet")
    shutil.copy(search["positive_scores"], folder / "positive-scores.parquet")
    shutil.copy(search["near_pairs"], folder / "near-pairs.parquet")
    if "corpus_duplicates" in search:
        shutil.copy(search["corpus_duplicates"], folder / "corpus-duplicates.parquet")
    shutil.copy(texts.positives, folder / "positives.parquet")
    pl.read_parquet(texts.query_files).write_parquet(folder / "queries.parquet")
    needed = pl.concat([pl.read_parquet(search["hits"], columns=["doc_row"]),
                        pl.read_parquet(texts.positives, columns=["doc_row"])])["doc_row"].unique()
    (pl.scan_parquet(texts.corpus_files).filter(pl.col("row").is_in(needed)).collect()
     .write_parquet(folder / "documents.parquet"))
    meta = {"depth": depth, "max_positives": texts.max_positives}
    (folder / "meta.json").write_text(json.dumps(meta, allow_nan=False))


def load_candidates(folder: Path) -> tuple[Texts, dict[str, str], int]:
    """The stored candidates as the (texts, search results, depth) that mining and writing read."""
    if not (folder / "meta.json").exists():
        raise RemineError(f"{folder.parent}: this version holds no stored candidates; rebuild it with negforge build")
    meta = json.loads((folder / "meta.json").read_text())
    texts = Texts(query_files=(str(folder / "queries.parquet"),), corpus_files=(str(folder / "documents.parquet"),),
                  positives=str(folder / "positives.parquet"), max_positives=meta["max_positives"])
    search = {"hits": str(folder / "hits.parquet"), "positive_scores": str(folder / "positive-scores.parquet"),
              "near_pairs": str(folder / "near-pairs.parquet")}
    if (folder / "corpus-duplicates.parquet").exists():
        search["corpus_duplicates"] = str(folder / "corpus-duplicates.parquet")
    return texts, search, meta["depth"]


def check_remine(parent_config: dict[str, Any], config: Any, stored_depth: int, max_positives: int) -> None:
    """Refuse options the stored candidates cannot serve: other inputs, model, search, corpus deduplication or
    rescoring model, or a deeper window. (The rescorer's margin and threshold may change: every candidate has its
    rescore.)"""
    new = config.content_dict()
    changed = [section for section in ("input", "embed", "search") if new[section] != parent_config[section]]
    old_dedup, old_rescore = parent_config.get("dedup", {}), parent_config.get("rescore", {})
    if config.dedup.corpus != old_dedup.get("corpus", False) or (
            config.dedup.corpus and config.dedup.eps != old_dedup.get("eps")):
        changed.append("dedup.corpus (and its eps)")
    if config.rescore.scoring_settings() != {key: old_rescore.get(key) for key in config.rescore.scoring_settings()}:
        changed.append("the rescorer's model and inputs")
    if changed:
        raise RemineError(f"re-mining reuses the stored candidates, so {', '.join(changed)} cannot change; "
                          f"use negforge build for that")
    needed = config.search.depth or config.mine.effective_range_max(max_positives) + max_positives
    if needed > stored_depth:
        raise RemineError(f"these options need the top {needed} candidates per query, but the version stored "
                          f"{stored_depth} (its search depth); run negforge build with search.depth >= {needed}")

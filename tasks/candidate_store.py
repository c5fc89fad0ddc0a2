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

from negforge.schemas.stages import CandidateFiles, StoredCandidates, Texts


class RemineError(ValueError):
    """The stored candidates cannot serve the requested options."""


def save_candidates(folder: Path, parts: list[CandidateFiles], texts: Texts, depth: int,
                    corpus_duplicates: str | None = None) -> None:
    """Write what re-mining needs into `folder`: the partitions' candidates, in query order, streamed into one file
    each, and the texts they name."""
    folder.mkdir(parents=True)
    sources = list(dict.fromkeys(parts))  # a remine's partitions share one stored file
    for name, field in (("hits", "hits"), ("positive-scores", "positive_scores"), ("near-pairs", "near_pairs")):
        pl.scan_parquet([getattr(p, field) for p in sources]).sink_parquet(folder / f"{name}.parquet")
    if corpus_duplicates:
        shutil.copy(corpus_duplicates, folder / "corpus-duplicates.parquet")
    shutil.copy(texts.positives, folder / "positives.parquet")
    pl.scan_parquet(texts.query_files).sink_parquet(folder / "queries.parquet")
    needed = pl.concat([pl.scan_parquet(folder / "hits.parquet").select("doc_row"),
                        pl.scan_parquet(texts.positives).select("doc_row")]).unique()
    (pl.scan_parquet(texts.corpus_files).join(needed, left_on="row", right_on="doc_row", how="semi")
     .sink_parquet(folder / "documents.parquet"))
    (folder / "meta.json").write_text(json.dumps({"depth": depth, "max_positives": texts.max_positives}, allow_nan=False))


def load_candidates(folder: Path) -> StoredCandidates:
    """The candidates stored in a version's `candidates/` folder."""
    if not (folder / "meta.json").exists():
        raise RemineError(f"{folder.parent}: this version holds no stored candidates; rebuild it with negforge build")
    meta = json.loads((folder / "meta.json").read_text())
    texts = Texts(query_files=(str(folder / "queries.parquet"),), corpus_files=(str(folder / "documents.parquet"),),
                  positives=str(folder / "positives.parquet"), max_positives=meta["max_positives"])
    files = CandidateFiles(hits=str(folder / "hits.parquet"), positive_scores=str(folder / "positive-scores.parquet"),
                           near_pairs=str(folder / "near-pairs.parquet"))
    duplicates = folder / "corpus-duplicates.parquet"
    return StoredCandidates(texts=texts, files=files, depth=meta["depth"],
                            corpus_duplicates=str(duplicates) if duplicates.exists() else None)


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
    needed = config.window_and_depth(max_positives)[1]
    if needed > stored_depth:
        raise RemineError(f"these options need the top {needed} candidates per query, but the version stored "
                          f"{stored_depth} (its search depth); run negforge build with search.depth >= {needed}")

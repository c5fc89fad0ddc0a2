"""The candidates kept inside each version (`candidates/`, outside its dataset configs), for re-mining.

They hold every retrieved candidate with its score to the depth searched (deeper for queries adaptive depth searched
deeper), its BM25 score and rescore when there were some, the positives and their scores, the used queries, the
documents those name, with their original row numbers, and the calibration's candidates (`calibration/`): enough to
mine (and calibrate) again with other options without embedding or searching.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import polars as pl

from negforge.schemas.config import BuildConfig
from negforge.schemas.stages import CandidateFiles, StoredCandidates, StoreMeta, Texts
from negforge.tasks.calibration.calibrate import MIN_QUERIES, calibration_rows, load_calibration

TOPIC_SAMPLE_FILE = "topic-sample.parquet"


class RemineError(ValueError):
    """The stored candidates cannot serve the requested options."""


def save_candidates(folder: Path, parts: list[CandidateFiles], texts: Texts, meta: StoreMeta,
                    corpus_duplicates: str | None = None, calibration: str | None = None,
                    topic_sample: str | None = None) -> None:
    """Write what re-mining needs into `folder`: the partitions' candidates, in query order, streamed into one file
    each, the texts they name, the calibration's candidates and the topic sample."""
    folder.mkdir(parents=True)
    sources = list(dict.fromkeys(parts))  # a remine's partitions share one stored file
    for name, field in (("hits", "hits"), ("positive-scores", "positive_scores"), ("near-pairs", "near_pairs")):
        pl.scan_parquet([getattr(p, field) for p in sources]).sink_parquet(folder / f"{name}.parquet")
    if corpus_duplicates:
        shutil.copy(corpus_duplicates, folder / "corpus-duplicates.parquet")
    if calibration:
        shutil.copytree(calibration, folder / "calibration")
    if topic_sample:
        shutil.copy(topic_sample, folder / TOPIC_SAMPLE_FILE)
    shutil.copy(texts.positives, folder / "positives.parquet")
    pl.scan_parquet(texts.query_files).sink_parquet(folder / "queries.parquet")
    needed = pl.concat([pl.scan_parquet(folder / "hits.parquet").select("doc_row"),
                        pl.scan_parquet(texts.positives).select("doc_row")]
                       + ([pl.scan_parquet(folder / "calibration" / "hits.parquet").select("doc_row")]
                          if calibration else [])).unique()
    (pl.scan_parquet(texts.corpus_files).join(needed, left_on="row", right_on="doc_row", how="semi")
     .sink_parquet(folder / "documents.parquet"))
    (folder / "meta.json").write_text(json.dumps(asdict(meta), allow_nan=False))


def load_candidates(folder: Path) -> StoredCandidates:
    """The candidates stored in a version's `candidates/` folder."""
    if not (folder / "meta.json").exists():
        raise RemineError(f"{folder.parent}: this version holds no stored candidates; rebuild it with negforge build")
    meta = json.loads((folder / "meta.json").read_text())
    texts = Texts(query_files=(str(folder / "queries.parquet"),), corpus_files=(str(folder / "documents.parquet"),),
                  positives=str(folder / "positives.parquet"), max_positives=meta["max_positives"])
    files = CandidateFiles(hits=str(folder / "hits.parquet"), positive_scores=str(folder / "positive-scores.parquet"),
                           near_pairs=str(folder / "near-pairs.parquet"))
    duplicates, sample = folder / "corpus-duplicates.parquet", folder / TOPIC_SAMPLE_FILE
    # versions from before adaptive depth by default recorded only the depth and the most positives
    sizes = {"documents": meta["depth"], "searchable": meta["depth"]} | meta
    return StoredCandidates(texts=texts, files=files, meta=StoreMeta(**sizes),
                            corpus_duplicates=str(duplicates) if duplicates.exists() else None,
                            calibration=load_calibration(folder / "calibration"),
                            topic_sample=str(sample) if sample.exists() else None)


def settings_fixed_by_candidates(parent: BuildConfig, config: BuildConfig, stored: StoredCandidates) -> list[str]:
    """The settings that made the stored candidates (`parent`: the version's config) and that `config` changes, named
    for a refusal: the inputs, model and search (each field), corpus deduplication, the rescoring model and the BM25
    settings. (The rescorer's margin and threshold and the lexical rules may change: every candidate has its
    scores.)"""
    changed = [f"{section}.{field}" for section in ("input", "embed", "search")
               for field in type(getattr(config, section)).model_fields
               if getattr(getattr(config, section), field) != getattr(getattr(parent, section), field)]
    if config.dedup.corpus != parent.dedup.corpus or (config.dedup.corpus and config.dedup.eps != parent.dedup.eps):
        changed.append("dedup.corpus (and its eps)")
    if config.rescore.scoring_settings() != parent.rescore.scoring_settings():
        changed.append("the rescorer's model and inputs")
    if stored.meta.lexical and config.lexical.index_settings() != parent.lexical.index_settings():
        changed.append("the BM25 settings (lexical.k1, b, stopwords)")
    return changed


def check_remine(parent: BuildConfig, config: BuildConfig, stored: StoredCandidates) -> None:
    """Refuse options the stored candidates cannot serve: settings they were made with (settings_fixed_by_candidates),
    a lexical rule without BM25 scores, calibration without the calibration's candidates, or the topic rule without
    topic centralities or the topic sample (check_depth judges the window, once the options to mine with are known)."""
    changed = settings_fixed_by_candidates(parent, config, stored)
    if changed:
        raise RemineError(f"re-mining reuses the stored candidates, so {', '.join(changed)} cannot change; "
                          f"use negforge build for that")
    if config.lexical.rules_on() and not stored.meta.lexical:
        raise RemineError("lexical.ratio and lexical.fusion need BM25 scores, which this version's candidates do not "
                          "have (built with mine.strategy fixed and no lexical rule); run negforge build")
    if config.mine.strategy == "auto" and stored.calibration is None and len(
            calibration_rows(pl.read_parquet(stored.texts.positives))) >= MIN_QUERIES:
        raise RemineError("mine.strategy auto needs the calibration's candidates, which this version does not hold "
                          "(built with mine.strategy fixed); run negforge build, or remine with mine.strategy=fixed")
    topic_rule = config.mine.strategy == "auto" or config.mine.topic_quantile is not None
    if (topic_rule or config.mine.max_topic_centrality is not None) and not stored.meta.topic:
        raise RemineError("the topic rule (mine.strategy auto, mine.topic_quantile, mine.max_topic_centrality) needs "
                          "the candidates' topic centralities, which this version's do not have (built before the "
                          "topic rule); run negforge build")
    if topic_rule and stored.topic_sample is None:
        raise RemineError("mine.strategy auto and mine.topic_quantile derive the topic bound from the topic sample, "
                          "which this version does not hold (built with mine.strategy fixed and no topic_quantile); "
                          "run negforge build, or remine with mine.strategy=fixed and without mine.topic_quantile")


def check_depth(mining: BuildConfig, stored: StoredCandidates) -> None:
    """Refuse options to mine with (the calibration's choice applied) whose window needs deeper candidates than
    were stored."""
    needed = mining.window_and_depth(stored.meta.max_positives)[1]
    if needed > stored.meta.depth:
        raise RemineError(f"these options need the top {needed} candidates per query, but the version stored "
                          f"{stored.meta.depth} (its search depth); run negforge build with search.depth >= {needed}")

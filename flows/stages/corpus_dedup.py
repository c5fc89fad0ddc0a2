"""Corpus deduplication as a stage: near-duplicate pairs found by a few tasks per worker, then one choice."""

from __future__ import annotations

from pathlib import Path

from negforge.flows.orchestration.task_options import negforge_task
from negforge.schemas.config import BuildConfig
from negforge.schemas.stages import CorpusDeduplicated, Texts, VectorFile
from negforge.tasks.mining.corpus_dedup import choose_kept, near_duplicate_pairs
from negforge.tasks.runtime.sizing import memory_budget_bytes, ranges, task_count
from negforge.tasks.search.exact import block_rows

pairs_task = negforge_task(near_duplicate_pairs, "corpus near-duplicates", retried=True)
choose_kept_task = negforge_task(choose_kept, "choose kept documents")


def dedup_corpus(texts: Texts, corpus: VectorFile, config: BuildConfig, out_dir: Path,
                 workers: int) -> CorpusDeduplicated:
    """Find near-duplicate documents in parallel (each task: a range of rows against the rows before it), then
    choose which to drop before searching."""
    out_dir.mkdir(parents=True, exist_ok=True)
    budget = memory_budget_bytes(config.runtime, workers)
    cuts = ranges(corpus.rows, task_count(corpus.rows, corpus.dim * 4 * 2, workers, config.runtime))
    futures = [pairs_task.with_options(task_run_name=f"corpus near-duplicates {i + 1}/{len(cuts)}")
               .submit(first, stop, corpus, block_rows(corpus.dim, budget, corpus.rows), 1 - config.dedup.eps,
                       str(out_dir / f"pairs-{i:05d}.parquet"))
               for i, (first, stop) in enumerate(cuts)]
    return choose_kept_task([f.result() for f in futures], texts.positives, texts.corpus_files, str(out_dir),
                            task_runs=len(futures) + 1)

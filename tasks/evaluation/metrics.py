"""Measure a model on an evaluation split with sentence-transformers' InformationRetrievalEvaluator.

The evaluator ranks the whole corpus for each query and reports nDCG@10, MRR@10 and Recall@100 as means; the paired
bootstrap needs nDCG@10 per query, so the evaluator's own ranked hits are kept and scored with its own DCG, with its
tie order (score, then corpus id). Their mean equals the evaluator's nDCG@10 (tested).
"""

from __future__ import annotations

import time
from typing import Any

from negforge.schemas.stages import Encoder, EvaluationSplit, Retrieval
from negforge.tasks.evaluation.split import split_texts

METRICS = ("ndcg@10", "mrr@10", "recall@100")


def _evaluator(queries: dict[str, str], corpus: dict[str, str], relevant: dict[str, set[str]], encoder: Encoder,
               batch_size: int):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    class KeepingHits(InformationRetrievalEvaluator):
        """Keeps each query's ranked hits (corpus_id, score) of the last evaluation."""

        def compute_metrics(self, queries_result_list: list[Any]):
            self.hits = queries_result_list
            return super().compute_metrics(queries_result_list)

    return KeepingHits(queries, corpus, relevant, mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[10],
                       precision_recall_at_k=[100], map_at_k=[100], batch_size=batch_size, write_csv=False,
                       query_prompt=encoder.query_prompt or None, corpus_prompt=encoder.corpus_prompt or None)


def _ndcg_at_10(evaluator: Any, hits: list[dict[str, Any]], relevant: set[str]) -> float:
    top = sorted(hits, key=lambda hit: (-hit["score"], hit["corpus_id"]))[:10]
    gains = [1 if hit["corpus_id"] in relevant else 0 for hit in top]
    return evaluator.compute_dcg_at_k(gains, 10) / evaluator.compute_dcg_at_k([1] * len(relevant), 10)


def measure(model: Any, evaluation: EvaluationSplit, encoder: Encoder, batch_size: int) -> Retrieval:
    """nDCG@10, MRR@10 and Recall@100 of `model` on the split, and nDCG@10 per query."""
    started = time.perf_counter()
    queries, corpus, relevant = split_texts(evaluation)
    evaluator = _evaluator(queries, corpus, relevant, encoder, batch_size)
    scores = evaluator(model)
    function = evaluator.primary_metric.removesuffix("_ndcg@10")
    metrics = {name: round(float(scores[f"{function}_{name}"]), 6) for name in METRICS}
    per_query = {query: round(_ndcg_at_10(evaluator, hits, relevant[query]), 6)
                 for query, hits in zip(evaluator.queries_ids, evaluator.hits)}
    return Retrieval(metrics=metrics, per_query=per_query, seconds=round(time.perf_counter() - started, 2))

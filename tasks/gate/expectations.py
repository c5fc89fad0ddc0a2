"""The expectation suites, in code: what inputs and a training set must satisfy before anything is published.

Row-wise conditions are computed as boolean columns in polars (tasks/gate/row_checks.py) and expected true here:
Great Expectations' own row-wise expectations are far slower (DESIGN.md section 4). Each boolean column's name says
what a False row means.
"""

from __future__ import annotations

import great_expectations as gx

from negforge.schemas.config import ValidateConfig

# Boolean check columns of each checked table, with what a failing row is.
INPUT_CHECKS = {
    "corpus": {"text_not_empty": "document text is empty"},
    "queries": {"text_not_empty": "query text is empty"},
    "positives": {"query_resolves": "positive names an unknown query", "doc_resolves": "positive names an unknown document"},
}
TEXT_CHECKS = {"texts_not_empty": "a text of the row is null or empty"}
OUTPUT_CHECKS = {
    "negative_not_own_positive": "a negative is the row's positive (by id or text)",
    "negative_not_any_positive": "a negative is a known positive of the query (by id or text)",
    "negatives_unique": "a negative repeats within the row",
    "scores_in_range": "a score is not finite or outside the score range",
    "negatives_within_filters": "a kept negative breaks a configured margin, bound, the rescorer's rule or the "
                                "lexical ratio",
    "anchor_not_eval_query": "the anchor is a query of the evaluation split",
}


def _all_true(column: str) -> gx.expectations.Expectation:
    return gx.expectations.ExpectColumnValuesToBeInSet(column=column, value_set=[True])


MEANINGS = {**{k: v for checks in INPUT_CHECKS.values() for k, v in checks.items()}, **TEXT_CHECKS,
            **OUTPUT_CHECKS, "full": "fraction of queries that got all their negatives", "id": "ids unique and present"}


def input_suite(table: str) -> gx.ExpectationSuite:
    """ids unique and non-null, texts non-empty, every positive resolvable."""
    ids = ([gx.expectations.ExpectColumnValuesToNotBeNull(column="id"),
            gx.expectations.ExpectColumnValuesToBeUnique(column="id")] if table in ("corpus", "queries") else [])
    return gx.ExpectationSuite(name=f"negforge-input-{table}",
                               expectations=ids + [_all_true(c) for c in INPUT_CHECKS[table]])


def text_suite(cfg: ValidateConfig) -> gx.ExpectationSuite:
    """Every text of the training rows present and non-empty, and at least `min_rows` rows."""
    return gx.ExpectationSuite(name="negforge-output-texts", expectations=[
        gx.expectations.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows), _all_true("texts_not_empty")])


def output_suite() -> gx.ExpectationSuite:
    """Per-row checks of the ids table: positives, uniqueness, scores, filters, leakage."""
    return gx.ExpectationSuite(name="negforge-output-rows", expectations=[_all_true(c) for c in OUTPUT_CHECKS])


def coverage_suite(cfg: ValidateConfig) -> gx.ExpectationSuite:
    """The fraction of used queries that got all their negatives."""
    return gx.ExpectationSuite(name="negforge-output-coverage", expectations=[
        gx.expectations.ExpectColumnMeanToBeBetween(column="full", min_value=cfg.min_coverage, max_value=1.0)])

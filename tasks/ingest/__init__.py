"""Ingest: reading the user's files (BEIR, JSONL, CSV, parquet; plain or compressed), normalizing texts,
and the accepted/rejected split with a reason per row.

May import: schemas.
"""

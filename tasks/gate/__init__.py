"""The quality gate: the Great Expectations suites, the row-wise checks they read, the runner that validates and
quarantines, and the false-negative audit against held-out judgements.

May import: schemas, tasks.ingest, tasks.runtime.
"""

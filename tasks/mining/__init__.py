"""Mining: the rules that turn candidates into negatives (tasks/mining/rules.py: margins, bounds, reasons),
adaptive depth, rescoring, BM25 (lexical), the topic rule, corpus near-duplicates, partitions and the hub cap.

May import: schemas, tasks.ingest, tasks.embedding, tasks.search, tasks.gate.audit, tasks.registry.training_set,
tasks.runtime.
"""

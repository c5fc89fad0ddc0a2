"""Mining: the rules that turn candidates into negatives (tasks/mining/rules.py: margins, bounds, reasons),
adaptive depth, rescoring, BM25 (lexical), the topic rule, corpus near-duplicates, partitions and the hub cap.

May import: schemas, tasks.embedding, tasks.gate, tasks.registry, tasks.runtime, tasks.search.
"""

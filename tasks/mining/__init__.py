"""Mining: the rules that turn candidates into negatives (tasks/mining/rules.py: margins, bounds, reasons),
adaptive depth, rescoring, BM25 (lexical), the topic rule, corpus near-duplicates, partitions, the hub cap and the ids table.

May import: schemas, tasks.embedding, tasks.gate, tasks.runtime, tasks.search.
"""

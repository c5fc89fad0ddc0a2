"""Mining: the rules that turn candidates into negatives (tasks/mining/rules.py: margins, bounds, reasons), the
similarities they read, adaptive depth, rescoring, BM25 (lexical), the topic rule, corpus near-duplicates,
partitions, the recall probe of an approximate index, the hub cap and the ids table mining ends in.

May import: schemas, tasks.embedding, tasks.gate, tasks.runtime, tasks.search, tasks.storage.
"""

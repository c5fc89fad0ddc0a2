"""The evaluation loop: the held-out split, training examples, fine-tuning with sentence-transformers, retrieval
metrics, the paired bootstrap, evaluation records and their charts.

May import: schemas, tasks.embedding, tasks.gate, tasks.ingest, tasks.registry, tasks.runtime, tasks.storage.
"""

"""Embedding: which model embeds (tasks/embedding/model.py), the embedding tasks, and the content-addressed
store of vectors under `runtime.workdir/embeddings/` that makes rebuilds and resumes cheap.

May import: schemas, tasks.runtime, tasks.storage.
"""

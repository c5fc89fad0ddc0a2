"""Search: exact (blocked FAISS) and approximate (IVF, HNSW) search of the corpus for each query. What mining
computes from the candidates (their similarities, the recall probe's mined negatives) is tasks.mining's.

May import: schemas, tasks.runtime.
"""

"""Search: exact (blocked FAISS) and IVF search of the corpus for each query, the IVF recall probe, and the
cosine similarities mining needs beside the scores.

May import: schemas, tasks.mining, tasks.runtime.
"""

"""Storage: every read, write, list, delete and commit on a registry or workdir, local folder or object store
(`s3://`, `gs://`, `az://`, `file://`, plain paths), through fsspec; the conditional writes (create-if-absent,
compare-and-swap) that publishing relies on where there is no rename or lock; which store errors are worth a retry.

May import: nothing of negforge (fsspec and its stores, pydantic).
"""

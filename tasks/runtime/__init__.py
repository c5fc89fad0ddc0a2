"""What every stage leans on: sizing (memory and workers), progress files, preflight checks of storage, and
containment (no link is followed out of the workdir or registry).

May import: schemas; preflight.py also tasks.embedding (the model's size) and tasks.registry (its folders).
"""

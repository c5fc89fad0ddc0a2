"""What every stage leans on: sizing (memory and workers), progress files, permanent OS errors (never retried,
reported naming the path), and containment (no link is followed out of the workdir or registry). The preflight
checks before a run read the model and the registry too, so they are flows/orchestration/preflight.py.

May import: schemas.
"""

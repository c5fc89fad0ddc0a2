"""The registry and what a version holds: versions published atomically, the training set files, the stored
candidates, the dataset card, charts, diffs between versions, the up-to-date check and housekeeping (gc).

May import: schemas, tasks.calibration, tasks.embedding, tasks.ingest, tasks.runtime.
"""

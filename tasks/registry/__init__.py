"""The registry and what a version holds: versions published atomically, the training set files, the stored
candidates, the dataset card, charts, diffs between versions, the up-to-date check, housekeeping (gc) and what
produced a version (code and package versions).

May import: schemas, tasks.calibration, tasks.embedding, tasks.ingest, tasks.runtime, tasks.storage.
"""

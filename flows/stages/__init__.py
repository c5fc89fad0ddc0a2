"""The stages of the flows: each submits its tasks to the Dask cluster and returns a typed result
(schemas/stages.py); the flows read as their list of stages.

May import: flows.orchestration, schemas, tasks.calibration, tasks.embedding, tasks.gate, tasks.mining,
tasks.registry, tasks.runtime, tasks.search, tasks.storage.
"""

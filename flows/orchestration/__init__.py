"""How runs are run: the checks before a run (preflight), the Dask cluster's lifecycle (local or at
`runtime.dask_address`), the Prefect API server started for a run, task options (retries, names), progress of stages,
console escaping, the workers' forkserver, artifact keys.

May import: schemas, tasks.embedding, tasks.registry, tasks.runtime, tasks.storage.
"""

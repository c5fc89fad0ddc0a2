"""Imported only by the server process that local Dask workers fork from (first in its preload list,
flows/orchestration/dask_cluster.py): it moves that server, and so every worker forked from it, out of the run's process
group.

A Ctrl-C or a SIGTERM to the group then reaches the run only, and the run kills its workers itself. In the group, the
server died at once; distributed's workers exit when their parent does, their nannies restarted them (a fresh server
importing torch), and a stopped build took 7-10 s instead of ~1 s. Each worker would also print a KeyboardInterrupt
traceback for a Ctrl-C (polars hooks SIGINT itself). The server still exits when the run's process does (its pipe
from it closes), and its workers then exit too."""

import os

os.setsid()

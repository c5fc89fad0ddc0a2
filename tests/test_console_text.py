"""User data on a console or in a log line: control characters escaped, long values cut short."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from negforge.schemas.console_text import printable, printable_lines, quoted, shortened


def test_control_characters_are_escaped_and_other_text_is_left_alone():
    assert printable("a\x1b[31mred\x00\x07\x7f\x9b\ud800\u202eb") == "a\\x1b[31mred\\x00\\x07\\x7f\\x9b\\ud800\\u202eb"
    assert printable("café 東京 ∑ tab\there") == "café 東京 ∑ tab\\there"
    assert printable_lines("first\x1b\nsecond\r") == "first\\x1b\nsecond\\r"


def test_long_values_are_cut_with_the_length_they_had():
    assert quoted("short") == "'short'"
    assert quoted("a" * 1000) == "'" + "a" * 79 + "...(1002 characters)"
    assert shortened("b" * 81, 80) == "b" * 80 + "...(81 characters)"
    assert quoted([1] * 100).endswith("...(300 characters)")


WORKER_SCRIPT = """
import logging
import warnings

from distributed import LocalCluster
from prefect import flow
from prefect_dask import DaskTaskRunner

from negforge.flows.orchestration.console_lines import escape_console_lines
from negforge.flows.orchestration.task_options import negforge_task

ROW = "row \\x1b[2J\\x00 end"


def speak():
    logging.getLogger("distributed.worker").warning("dask line: %s", ROW)
    warnings.warn(f"warning line: {ROW}")
    raise ValueError(f"failed on {ROW}")


@flow
def speaking():
    escape_console_lines()  # as negforge's flows do
    negforge_task(speak, "speak").submit().wait()


if __name__ == "__main__":
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        speaking.with_options(task_runner=DaskTaskRunner(address=cluster.scheduler_address))()
"""


@pytest.mark.slow
def test_a_worker_that_negforge_did_not_set_up_escapes_what_it_prints_about_a_task(tmp_path, prefect_server):
    """A plain cluster, as a `runtime.dask_address` scheduler's is: its workers run negforge's tasks, and their
    console (here the script's stderr) gets Dask's lines, warnings and the failed task run's lines."""
    script = tmp_path / "speak.py"
    script.write_text(WORKER_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env=os.environ.copy())
    for stream in (done.stdout, done.stderr):
        assert "\x1b" not in stream and "\x00" not in stream, stream[-3000:]
    escaped = "row \\x1b[2J\\x00 end"
    for line in ("dask line: ", "warning line: ", "failed on "):
        assert line + escaped in done.stderr, done.stderr[-3000:]


@pytest.mark.slow
def test_a_row_with_nul_and_esc_reaches_no_console_raw_through_a_build_with_its_own_workers(tmp_path, prefect_server):
    from tests.conftest import DEMO, beir_subset, run_cli, write_config

    data = beir_subset(DEMO, tmp_path / "small", 20, 100)
    with (data / "corpus.jsonl").open("a") as handle:
        handle.write('{"_id": "d\\u001b[2J", "text": "a clear screen \\u001b[2J and a \\u0000 nul"}\n')  # accepted
        handle.write('{"_id": "raw", "text": "\x1b[2J\x00"\n')  # raw ESC and NUL: not JSON, rejected and logged
    config = write_config(tmp_path / "build.yaml", data)  # no dask_address: the CLI's workers, writing to its stderr
    done = run_cli("build", "--config", str(config))
    assert "Connecting to existing Dask cluster LocalCluster" in done.stderr  # the run's own cluster
    for stream in (done.stdout, done.stderr):
        assert "\x1b" not in stream and "\x00" not in stream, stream[-3000:]
    assert '{"_id": "raw", "text": "\\x1b[2J\\x00"' in done.stderr

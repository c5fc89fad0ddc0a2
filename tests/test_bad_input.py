"""Every malformed input a user will hand negforge: a reject with file, line, field and reason, or a clear error,
and in every case accepted + rejected = rows read."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from unittest import mock

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from negforge.schemas.config import InputConfig
from negforge.schemas.manifest import Manifest
from negforge.schemas.stages import Ingested
from negforge.tasks.ingest import readers
from negforge.tasks.ingest.ingest import ingest
from negforge.tasks.ingest.readers import InputError, read_qrels

GOOD_DOCS = "".join(json.dumps({"_id": f"d{i}", "title": "t", "text": f"text {i}"}) + "\n" for i in range(200))
GOOD_QUERIES = "".join(json.dumps({"_id": f"q{i}", "text": f"query {i}"}) + "\n" for i in range(100))
GOOD_QRELS = "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(100))


def _run(tmp_path: Path, docs: bytes | str = GOOD_DOCS, queries: str = GOOD_QUERIES, qrels: str = GOOD_QRELS,
         **cfg) -> dict:
    files = {"corpus.jsonl": docs, "queries.jsonl": queries, "qrels.tsv": qrels}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    config = InputConfig(corpus=str(tmp_path / "corpus.jsonl"), queries=str(tmp_path / "queries.jsonl"),
                         qrels=str(tmp_path / "qrels.tsv"), **{"max_reject_fraction": 1.0, **cfg})
    summary = ingest(config, tmp_path / "out", shard_size=64)
    for entry in summary.inputs:
        assert entry["rows_accepted"] + entry["rows_rejected"] == entry["rows_read"]
    return summary


def _rejects(summary: Ingested) -> list[tuple]:
    return pl.read_parquet(summary.rejects_path).select("source", "line", "field", "reason").rows()


CASES = {
    "malformed json": (dict(docs=GOOD_DOCS + '{"_id": "x", "text": \n'), ("corpus.jsonl", 201, "*", "malformed_json")),
    "missing field": (dict(docs=GOOD_DOCS + '{"_id": "x"}\n'), ("corpus.jsonl", 201, "text", "missing_field")),
    "wrongly typed field": (dict(docs=GOOD_DOCS + '{"_id": "x", "text": ["a"]}\n'),
                            ("corpus.jsonl", 201, "text", "wrong_type")),
    "whitespace-only text": (dict(docs=GOOD_DOCS + '{"_id": "x", "text": "  \\t "}\n'),
                             ("corpus.jsonl", 201, "text", "empty_text")),
    "invalid utf-8": (dict(docs=GOOD_DOCS.encode() + b'{"_id": "x", "text": "\xff\xfe"}\n'),
                      ("corpus.jsonl", 201, "*", "invalid_utf8")),
    "duplicate id, same text": (dict(docs=GOOD_DOCS + '{"_id": "d1", "title": "t", "text": "text 1"}\n'),
                                ("corpus.jsonl", 201, "_id", "duplicate_id_same_text")),
    "qrel naming an unknown query": (dict(qrels=GOOD_QRELS + "nope\td1\t1\n"),
                                     ("qrels.tsv", 102, "query-id", "unknown_query")),
    "qrel naming an unknown document": (dict(qrels=GOOD_QRELS + "q1\tnope\t1\n"),
                                        ("qrels.tsv", 102, "corpus-id", "unknown_document")),
    "qrel score not a number": (dict(qrels=GOOD_QRELS + "q1\td2\thigh\n"), ("qrels.tsv", 102, "score", "bad_score")),
    "wrong column count": (dict(qrels=GOOD_QRELS + "q1\td2\n"), ("qrels.tsv", 102, "*", "wrong_column_count")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_bad_row_is_rejected_with_file_line_field_and_reason(tmp_path, case):
    files, (name, line, field, reason) = CASES[case]
    summary = _run(tmp_path, **files)
    [(source, got_line, got_field, got_reason)] = _rejects(summary)
    assert (Path(source).name, got_line, got_field, got_reason) == (name, line, field, reason)
    assert summary.counts.rows_rejected == 1


@pytest.mark.parametrize("content, message", [
    ("", r"corpus\.jsonl: file is empty"),
    ("\n\n", r"corpus\.jsonl: file is empty"),
])
def test_an_empty_file_is_an_error_naming_it(tmp_path, content, message):
    with pytest.raises(InputError, match=message):
        _run(tmp_path, docs=content)


def test_a_wrong_delimiter_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(InputError, match=r"qrels\.tsv: header has one column .*delimiter"):
        _run(tmp_path, qrels=GOOD_QRELS.replace("\t", ";"))


def test_a_configured_column_that_no_row_has_is_an_error(tmp_path):
    with pytest.raises(InputError, match=r"corpus\.jsonl: no column 'body'"):
        _run(tmp_path, doc_text_field="body")


def test_queries_without_positives_are_unused_not_rejected(tmp_path):
    summary = _run(tmp_path, qrels="query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(60)))
    assert summary.counts.queries_unused == 40 and summary.counts.rows_rejected == 0


def test_too_many_rejects_stop_before_embedding(tmp_path):
    bad = GOOD_DOCS + "".join("{broken\n" for _ in range(5))
    with pytest.raises(InputError, match=r"5 of 405 input rows rejected .*malformed_json \(5\).*rejects\.parquet"):
        _run(tmp_path, docs=bad, max_reject_fraction=0.01)


LINE = st.one_of(
    st.builds(lambda i, t: json.dumps({"_id": i, "title": "x", "text": t}), st.text(max_size=4), st.text(max_size=8)),
    st.builds(lambda d: json.dumps(d), st.dictionaries(st.sampled_from(["_id", "text", "title", "z"]),
                                                      st.one_of(st.none(), st.integers(), st.text(max_size=5),
                                                                st.lists(st.integers(), max_size=2)))),
    st.text(max_size=20),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINE, min_size=1, max_size=30), garbage=st.binary(max_size=30))
def test_random_corpus_files_never_crash_and_always_account_for_every_row(tmp_path, lines, garbage):
    content = (json.dumps({"_id": "known", "text": "a known document"}) + "\n" + "\n".join(lines)).encode(
        "utf-8", "surrogatepass") + b"\n" + garbage
    summary = _run(tmp_path, docs=content, qrels="query-id\tcorpus-id\tscore\nq0\tknown\t1\n")
    corpus = summary.inputs[0]
    assert corpus["rows_read"] == len([line for line in content.splitlines() if line.strip()])
    assert summary.counts.positives == 1


def _qrels_row_by_row(content: bytes, sep: str) -> list[tuple]:
    """Today's rules for a qrels file read one row at a time with Python's csv module: (line, field, reason)."""
    reader = csv.reader(io.StringIO(content.decode("utf-8", "surrogateescape"), newline=""), delimiter=sep)
    header = [h.strip() for h in next(reader)]
    rejects, previous_end = [], reader.line_num
    for values in reader:
        number, previous_end = previous_end + 1, reader.line_num
        if not any(v.strip() for v in values):
            continue
        if any("\udc80" <= ch <= "\udcff" for ch in sep.join(values)):
            rejects.append((number, "*", "invalid_utf8"))
        elif len(values) != len(header):
            rejects.append((number, "*", "wrong_column_count"))
        else:
            record = dict(zip(header, values))
            empty = next((name for name in ("query-id", "corpus-id") if not record[name].strip()), None)
            try:
                score = float(record["score"])
            except ValueError:
                score = float("nan")
            if empty:
                rejects.append((number, empty, "empty_text"))
            elif score != score:
                rejects.append((number, "score", "bad_score"))
    return rejects


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(st.text(alphabet="ab\t,\"' 1.x\r_e", max_size=6), min_size=0, max_size=4), max_size=20),
       fmt=st.sampled_from(["tsv", "csv"]), garbage=st.sampled_from([b"", b"q\xff\td\t1\n"]),
       batch=st.sampled_from([16, 1 << 20]))
def test_random_delimited_files_are_read_as_row_by_row_reading_reads_them(tmp_path, rows, fmt, garbage, batch):
    sep = "\t" if fmt == "tsv" else ","
    path = tmp_path / f"qrels.{fmt}"
    content = (sep.join(["query-id", "corpus-id", "score"]) + "\n" + "\n".join(sep.join(r) for r in rows) + "\n"
               ).encode() + garbage
    path.write_bytes(content)
    with mock.patch.object(readers, "BATCH_BYTES", batch):
        try:
            parsed = read_qrels(str(path), "auto")
        except InputError as error:
            assert "file has no rows" in str(error)
            return
    assert parsed.rejects.select("line", "field", "reason").rows() == _qrels_row_by_row(content, sep)
    assert parsed.rows.height + parsed.rejects.height == parsed.files[0].rows_read


@pytest.mark.slow
def test_the_cli_reports_bad_input_in_readable_lines_and_publishes_nothing(config, tiny_beir, prefect_server):
    from negforge.tasks.registry.versions import Registry
    from tests.conftest import run_cli

    with (tiny_beir / "corpus.jsonl").open("a") as handle:
        handle.write("{broken\n" * 10)
    done = run_cli("build", "--config", str(config), check=False)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("negforge: error: 10 of ") and "malformed_json (10)" in last and "rejects.parquet" in last
    assert Registry(config.parent / "registry", "tiny").versions() == []


def test_all_of_scifact_passes_ingest_and_the_input_suites(scifact, tmp_path):
    from negforge.tasks.gate.gates import check_inputs

    for split in ("train", "test"):
        cfg = InputConfig(corpus=str(scifact / "corpus.jsonl"), queries=str(scifact / "queries.jsonl"),
                          qrels=str(scifact / "qrels" / f"{split}.tsv"))
        summary = ingest(cfg, tmp_path / split, shard_size=1000)
        assert summary.counts.rows_rejected == 0 and summary.counts.documents == 5183
        assert check_inputs(summary, str(tmp_path / split / "gx"))["success"]


@pytest.mark.slow
def test_rejected_rows_reach_the_console_and_the_run_report_with_control_characters_escaped(config, tiny_beir,
                                                                                             prefect_server):
    from negforge.flows.stages.run_report import report_markdown
    from tests.conftest import run_cli

    with (tiny_beir / "corpus.jsonl").open("a") as handle:  # raw ESC and NUL: not JSON, rejected as malformed_json
        handle.write('{"_id": "evil", "text": "\x1b[31mred\x00"\n')
    with (tiny_beir / "qrels" / "train.tsv").open("a") as handle:  # an id with ESC: rejected as unknown_query
        handle.write("q\x1b]0;title\x07\tevil\t1\n")
    done = run_cli("build", "--config", str(config))
    for stream in (done.stdout, done.stderr):
        assert "\x1b" not in stream and "\x00" not in stream and "\x07" not in stream
    warnings = [line for line in done.stderr.splitlines() if "rows rejected: " in line]
    assert len(warnings) == 2, done.stderr
    assert '{"_id": "evil", "text": "\\x1b[31mred\\x00"' in warnings[0] and "malformed_json: 1" in warnings[0]
    assert "unknown_query: 1" in warnings[1] and "q\\x1b]0;title\\x07" in warnings[1]

    version = Path(done.stdout.strip().splitlines()[-1])
    manifest = json.loads((version / "manifest.json").read_text())
    assert "\x1b[31mred\x00" in manifest["rejects"]["samples"]["malformed_json"][0]  # the data keeps the value
    report = report_markdown(Manifest.model_validate(manifest), str(version), True)
    assert "\x1b" not in report and "\x00" not in report and "\\x1b[31mred\\x00" in report

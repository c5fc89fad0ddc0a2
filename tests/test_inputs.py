"""Inputs as people have them (a BOM, compressed files, a JSON array, a folder or glob of files, a conflicting
duplicate id), read in batches with exactly the row-by-row outcome."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import re
import unicodedata
from pathlib import Path
from unittest import mock

import polars as pl
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from negforge.schemas.config import InputConfig
from negforge.schemas.manifest import Manifest
from negforge.tasks.ingest import readers
from negforge.tasks.ingest.ingest import ingest
from negforge.tasks.ingest.readers import InputError
from negforge.tasks.ingest.text import text_hashes

DOCS = [{"_id": f"d{i}", "title": f"T{i}", "text": f"document {i}"} for i in range(6)]
QUERIES = [{"_id": f"q{i}", "text": f"query {i}"} for i in range(3)]
QRELS = "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(3))


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _ingest(tmp_path: Path, corpus: str | Path, **options) -> object:
    (tmp_path / "queries.jsonl").write_bytes(_jsonl(QUERIES))
    (tmp_path / "qrels.tsv").write_text(QRELS)
    cfg = InputConfig(corpus=str(corpus), queries=str(tmp_path / "queries.jsonl"), qrels=str(tmp_path / "qrels.tsv"),
                      **{"max_reject_fraction": 1.0, **options})
    return ingest(cfg, tmp_path / "out", shard_size=4)


def _rejects(summary) -> list[tuple]:
    return pl.read_parquet(summary.rejects_path).select(
        pl.col("source").str.split("/").list.last(), "line", "field", "reason").rows()


def _corpus_ids(summary) -> list[str]:
    return pl.read_parquet(summary.texts.corpus_files)["id"].to_list()


def test_a_utf8_bom_does_not_cost_the_first_document(tmp_path):
    (tmp_path / "corpus.jsonl").write_bytes(b"\xef\xbb\xbf" + _jsonl(DOCS))
    (tmp_path / "qrels.tsv").write_bytes(b"\xef\xbb\xbf" + QRELS.encode())
    summary = _ingest(tmp_path, tmp_path / "corpus.jsonl")
    assert summary.counts.rows_rejected == 0 and _corpus_ids(summary) == [d["_id"] for d in DOCS]


@pytest.mark.parametrize("suffix, compress", [
    (".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress),
    (".zst", lambda data: zstandard.ZstdCompressor().compress(data)),
])
def test_compressed_files_are_read_and_hashed_as_stored(tmp_path, suffix, compress):
    stored = compress(_jsonl(DOCS))
    (tmp_path / f"corpus.jsonl{suffix}").write_bytes(stored)
    summary = _ingest(tmp_path, tmp_path / f"corpus.jsonl{suffix}")
    assert summary.counts.rows_rejected == 0 and _corpus_ids(summary) == [d["_id"] for d in DOCS]
    assert summary.inputs[0]["sha256"] == hashlib.sha256(stored).hexdigest()


def test_a_zst_file_of_several_frames_is_read_to_its_end(tmp_path):
    frames = [zstandard.ZstdCompressor().compress(_jsonl(part)) for part in (DOCS[:3], DOCS[3:])]
    (tmp_path / "corpus.jsonl.zst").write_bytes(b"".join(frames))
    assert _ingest(tmp_path, tmp_path / "corpus.jsonl.zst").counts.documents == len(DOCS)


def test_a_corrupt_compressed_file_is_an_error_naming_it(tmp_path):
    (tmp_path / "corpus.jsonl.gz").write_bytes(gzip.compress(_jsonl(DOCS))[:40])
    with pytest.raises(InputError, match=r"corpus\.jsonl\.gz: not a readable gzip file"):
        _ingest(tmp_path, tmp_path / "corpus.jsonl.gz")


def test_a_json_array_is_read_as_rows(tmp_path):
    (tmp_path / "corpus.json").write_text(json.dumps([*DOCS, "not an object"], indent=2))
    summary = _ingest(tmp_path, tmp_path / "corpus.json")
    assert _corpus_ids(summary) == [d["_id"] for d in DOCS]
    assert _rejects(summary) == [("corpus.json", 7, "*", "not_an_object")]  # numbered by position in the array


def test_a_broken_json_array_is_an_error_naming_file_and_line(tmp_path):
    (tmp_path / "corpus.json").write_text('[\n{"_id": "d1", "text": "x"},\n{"_id": \n')
    with pytest.raises(InputError, match=r"corpus\.json: not valid JSON \(line 4"):
        _ingest(tmp_path, tmp_path / "corpus.json")


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    (folder / "_tmp").mkdir(parents=True)
    (folder / "part-1.jsonl").write_bytes(_jsonl(DOCS[3:]) + b"{broken\n")
    (folder / "part-0.jsonl").write_bytes(_jsonl(DOCS[:3]))
    (folder / ".part-2.jsonl.crc").write_text("hidden")
    (folder / "_SUCCESS").write_text("")
    (folder / "_tmp" / "part-9.jsonl").write_bytes(_jsonl([{"_id": "x", "text": "never read"}]))
    return folder


def test_a_folder_is_one_input_of_files_sorted_by_name_hidden_and_underscored_skipped(tmp_path):
    folder = _folder(tmp_path)
    summary = _ingest(tmp_path, folder)
    assert _corpus_ids(summary) == [d["_id"] for d in DOCS]
    assert _rejects(summary) == [("part-1.jsonl", 4, "*", "malformed_json")]
    members = [entry for entry in summary.inputs if "part-" in entry["path"]]
    assert [(Path(e["path"]).name, e["rows_read"], e["rows_accepted"], e["rows_rejected"]) for e in members] == [
        ("part-0.jsonl", 3, 3, 0), ("part-1.jsonl", 4, 3, 1)]
    assert members[1]["sha256"] == hashlib.sha256((folder / "part-1.jsonl").read_bytes()).hexdigest()


def test_a_glob_is_one_input(tmp_path):
    (tmp_path / "data").mkdir()
    for i, part in enumerate((DOCS[:2], DOCS[2:])):
        pl.DataFrame(part).write_parquet(tmp_path / "data" / f"train-{i}.parquet")
    (tmp_path / "data" / "notes.txt").write_text("not matched by the glob")
    summary = _ingest(tmp_path, tmp_path / "data" / "*.parquet")
    assert _corpus_ids(summary) == [d["_id"] for d in DOCS]
    assert [Path(e["path"]).name for e in summary.inputs[:2]] == ["train-0.parquet", "train-1.parquet"]


def test_an_input_holds_one_format(tmp_path):
    folder = _folder(tmp_path)
    pl.DataFrame(DOCS).write_parquet(folder / "part-3.parquet")
    with pytest.raises(InputError, match=r"corpus: one input holds one format, but .*part-0\.jsonl is jsonl and "
                                         r".*part-3\.parquet is parquet"):
        _ingest(tmp_path, folder)


def test_an_empty_folder_or_glob_is_an_error_naming_it(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: no data files"):
        _ingest(tmp_path, tmp_path / "empty")
    with pytest.raises(InputError, match=r"nothing-\*\.jsonl: no data files"):
        _ingest(tmp_path, tmp_path / "nothing-*.jsonl")


def test_a_conflicting_duplicate_id_rejects_every_row_with_that_id(tmp_path):
    garbage = {"_id": "d1", "title": "", "text": "<html>garbage</html>"}
    repeat = {"_id": "d2", "title": "T2", "text": "document 2"}
    (tmp_path / "corpus.jsonl").write_bytes(_jsonl([garbage, *DOCS, repeat]))
    summary = _ingest(tmp_path, tmp_path / "corpus.jsonl")
    assert _rejects(summary) == [("corpus.jsonl", 1, "_id", "duplicate_id_conflict"),
                                 ("corpus.jsonl", 3, "_id", "duplicate_id_conflict"),
                                 ("corpus.jsonl", 8, "_id", "duplicate_id_same_text"),
                                 ("qrels.tsv", 3, "corpus-id", "unknown_document")]  # q1 -> d1 has no document
    assert _corpus_ids(summary) == ["d0", "d2", "d3", "d4", "d5"]
    assert summary.reject_reasons == {"duplicate_id_conflict": 2, "duplicate_id_same_text": 1, "unknown_document": 1}
    assert summary.reject_samples["duplicate_id_conflict"] == ["corpus.jsonl:1 _id: d1", "corpus.jsonl:3 _id: d1"]


def test_rejects_show_a_count_and_three_samples_per_reason_in_the_run_report(tmp_path):
    from negforge.flows.stages.run_report import report_markdown

    (tmp_path / "corpus.jsonl").write_bytes(_jsonl(DOCS) + b"".join(b"{broken %d\n" % i for i in range(5)))
    summary = _ingest(tmp_path, tmp_path / "corpus.jsonl")
    assert summary.reject_samples == {"malformed_json": [f"corpus.jsonl:{7 + i} *: {{broken {i}" for i in range(3)]}
    manifest = {"dataset": "d", "version": "v0001", "inputs": list(summary.inputs), "counts": {
        **summary.counts.as_dict(), "rows": 1, "id_rows": 1}, "rejects": {
        "path": summary.rejects_path, "reasons": summary.reject_reasons, "samples": summary.reject_samples},
        "timings": {}, "reasons_per_query": {}, "reasons": {}, "scores": {}, "short_queries": {"count": 0, "ids": []},
        "validation": {"expectations": 1, "warnings": []}, "data_hash": "h",
        "embed": {"texts_embedded": 1, "texts_cached": 0}, "search": {"depth": 3, "range_max": 2}}
    report = report_markdown(Manifest.model_validate(manifest), "v0001", True)
    assert ("- malformed_json: 5 (e.g. corpus.jsonl:7 *: {broken 0; corpus.jsonl:8 *: {broken 1; "
            "corpus.jsonl:9 *: {broken 2)") in report


def test_text_shards_carry_the_length_of_each_text(tmp_path):
    (tmp_path / "corpus.jsonl").write_bytes(_jsonl(DOCS))
    shards = pl.read_parquet(_ingest(tmp_path, tmp_path / "corpus.jsonl").texts.corpus_files)
    assert shards["length"].dtype == pl.UInt32
    assert shards["length"].to_list() == [len(t) for t in shards["text"].to_list()]


def test_the_audit_honours_the_positive_threshold(tmp_path):
    from negforge.tasks.gate.audit import audit

    candidates = pl.DataFrame({"query_row": [0, 0], "doc_row": [1, 2], "score": [0.9, 0.8], "rank": [0, 1],
                               "reason": [None, None]},
                              schema={"query_row": pl.UInt32, "doc_row": pl.UInt32, "score": pl.Float32,
                                      "rank": pl.UInt32, "reason": pl.String})
    doc_ids = pl.DataFrame({"row": [1, 2], "id": ["d1", "d2"]}, schema={"row": pl.UInt32, "id": pl.String})
    (tmp_path / "heldout.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td1\t1\nq0\td2\t2\n")
    positives = pl.DataFrame({"query_row": [0], "query_id": ["q0"]}, schema={"query_row": pl.UInt32, "query_id": pl.String})
    rates = [audit(candidates, positives, doc_ids, str(tmp_path / "heldout.tsv"), "auto", threshold, 2)
             ["false_negative_rate"] for threshold in (0, 1)]
    assert rates == [1.0, 0.5]  # above 1, only d2 is judged relevant


def _reference_hash(text: str) -> str:
    """The hash as it was first defined, one text at a time; the embedding store is keyed by these values."""
    normal = re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()
    return hashlib.blake2b(normal.encode("utf-8"), digest_size=16).hexdigest()


TEXT = st.text(alphabet=st.sampled_from(
    list("ab \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u2000\u2001\u2028\u3000e\u0301\u0327\u00e9\u1e69\u0323\u0307\uac00\u1100"
         "\u1161")), max_size=12)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(st.one_of(TEXT, st.text(max_size=10)), max_size=20))
def test_hashes_in_bulk_equal_the_text_by_text_definition(texts):
    assert text_hashes(pl.Series(texts, dtype=pl.String)).to_list() == [_reference_hash(t) for t in texts]


def _row_by_row(content: bytes) -> list[tuple]:
    """Today's rules for a corpus file read one line at a time: (line, field, reason, raw) of each reject."""
    rejects = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            rejects.append((number, "*", "invalid_utf8", line.decode("utf-8", "replace")))
            continue
        try:
            record = json.loads(text)
        except ValueError:
            rejects.append((number, "*", "malformed_json", text))
            continue
        if not isinstance(record, dict):
            rejects.append((number, "*", "not_an_object", text))
            continue
        for name, required in (("_id", True), ("text", True), ("title", False)):
            value = record.get(name)
            if value is None and required:
                rejects.append((number, name, "missing_field", repr(record)))
            elif value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
                rejects.append((number, name, "wrong_type", repr(value)))
            elif required and not str(value).strip():
                rejects.append((number, name, "empty_text", str(value)))
            else:
                continue
            break
    return [(n, f, r, raw[:200]) for n, f, r, raw in rejects]


VALUE = st.one_of(st.none(), st.integers(-5, 10**20), st.booleans(), st.floats(allow_nan=True), TEXT,
                  st.lists(st.integers(), max_size=2), st.dictionaries(st.sampled_from("xy"), st.integers(), max_size=1))
RECORD = st.dictionaries(st.sampled_from(["_id", "text", "title", "other"]), VALUE)
LINE = st.one_of(RECORD.map(json.dumps), st.text(max_size=12),
                 st.sampled_from(["", "  ", "\x0b", "[1]", '{"a": 1}{"b": 2}', '{"_id": NaN}', '"x"']))
FIELDS = {"id": readers.Field("_id"), "text": readers.Field("text"), "title": readers.Field("title", required=False)}


def _read(path: Path, batch: int) -> tuple[list[tuple], int, int] | None:
    """Rejects (line, field, reason, raw), accepted rows and rows read of a corpus file read in `batch`-byte
    batches; None when the file is refused as a whole."""
    files = readers.input_files(str(path), "auto")
    with mock.patch.object(readers, "BATCH_BYTES", batch):
        try:
            batches = list(readers.read_input(files, FIELDS))
        except InputError as error:  # an empty file, or no row with an _id or a text
            assert "file is empty" in str(error) or "no column" in str(error)
            return None
    rejects = pl.concat([b.rejects for b in batches]).select("line", "field", "reason", "raw").rows()
    return rejects, sum(b.rows.height for b in batches), files[0].rows_read


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINE, min_size=1, max_size=40), breaks=st.sampled_from([b"\n", b"\r\n", b"\r"]),
       garbage=st.binary(max_size=8), batch=st.sampled_from([64, 1 << 20]))
def test_batches_reject_exactly_what_row_by_row_reading_rejects(tmp_path, lines, breaks, garbage, batch):
    content = breaks.join(line.encode("utf-8", "surrogatepass") for line in lines) + breaks + garbage
    (tmp_path / "corpus.jsonl").write_bytes(content)
    read = _read(tmp_path / "corpus.jsonl", batch)
    if read is not None:
        rejects, accepted, rows_read = read
        assert rejects == _row_by_row(content)
        assert accepted + len(rejects) == rows_read == len([x for x in content.splitlines() if x.strip()])


COLUMN_KIND = st.sampled_from([st.integers(-5, 99), st.booleans(), TEXT, st.lists(st.integers(0, 9), max_size=2),
                               st.none()])


@st.composite
def _typed_lines(draw) -> list[str]:
    """JSON lines whose every column keeps one JSON type (or null, or is absent): what bulk parsing takes."""
    kinds = {name: draw(COLUMN_KIND) for name in ("_id", "text", "title")}
    return [json.dumps({name: draw(kind) for name, kind in kinds.items() if draw(st.booleans())})
            for _ in range(draw(st.integers(1, 30)))]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=_typed_lines(), batch=st.sampled_from([64, 1 << 20]))
def test_bulk_parsing_rejects_exactly_what_row_by_row_reading_rejects(tmp_path, lines, batch):
    content = "\n".join(lines).encode() + b"\n"
    (tmp_path / "corpus.jsonl").write_bytes(content)
    with mock.patch.object(readers, "_records_one_by_one", side_effect=AssertionError("bulk parsing refused")):
        read = _read(tmp_path / "corpus.jsonl", batch)
    if read is not None:
        assert read[0] == _row_by_row(content)
        assert read[1] + len(read[0]) == read[2] == len(lines)


def test_the_quality_gate_reads_evaluation_qrels_with_the_same_reader(tmp_path, tiny_beir):
    from negforge.schemas.config import load_config
    from negforge.tasks.gate.row_checks import eval_query_hashes, shared_positives
    from negforge.tasks.ingest.text import text_hash
    from tests.conftest import write_config

    judged = [line.split("\t") for line in (tiny_beir / "qrels/train.tsv").read_text().splitlines()[1:]]
    (q1, d1, _), (q2, d2, _) = judged[0], next(j for j in judged if j[0] != judged[0][0] and j[1] != judged[0][1])
    eval_qrels = tmp_path / "eval.tsv.gz"
    eval_qrels.write_bytes(gzip.compress(f"query-id\tcorpus-id\tscore\n{q1}\t{d1}\t1\n{q2}\t{d2}\t0\n".encode()))
    cfg = load_config(write_config(tmp_path / "build.yaml", tiny_beir), [f"validate.eval_qrels={eval_qrels}"])
    texts = {q["_id"]: q["text"] for q in map(json.loads, (tiny_beir / "queries.jsonl").read_text().splitlines())}
    assert eval_query_hashes(cfg) == {text_hash(texts[q1]), text_hash(texts[q2])}
    positives = pl.DataFrame({"positive_id": [d1, d2]})
    assert shared_positives(positives, cfg.input, str(eval_qrels)) == 1  # d2 is judged, but not above the threshold


def test_date_like_and_integer_values_stay_as_written(tmp_path):
    dates = [{"_id": f"2020-01-0{i}", "text": f"2021-02-0{i} 10:00:00"} for i in range(1, 4)]  # pyarrow: timestamps
    numbers = [{"_id": i, "text": "x", "title": 1} for i in range(3)]
    for name, rows in (("dates.jsonl", dates), ("numbers.jsonl", numbers)):
        (tmp_path / name).write_bytes(_jsonl(rows))
        read = readers.read_table(str(tmp_path / name), "auto", FIELDS).rows
        assert read.select("id", "text", "title").rows() == [
            (str(r["_id"]), r["text"], str(r.get("title", ""))) for r in rows]


def test_a_folder_behind_an_fsspec_url_and_a_recursive_glob(tmp_path):
    import fsspec

    for i, part in enumerate((DOCS[:2], DOCS[2:])):
        with fsspec.open(f"memory://negforge-inputs/corpus/{i:02d}/part.jsonl.gz", "wb", compression="gzip") as out:
            out.write(_jsonl(part))
    summary = _ingest(tmp_path, "memory://negforge-inputs/corpus")
    assert _corpus_ids(summary) == [d["_id"] for d in DOCS]
    assert [re.sub("^memory:/+", "", e["path"]) for e in summary.inputs[:2]] == [
        f"negforge-inputs/corpus/{i:02d}/part.jsonl.gz" for i in range(2)]  # URLs as fsspec writes them
    (tmp_path / "deep" / "a" / "b").mkdir(parents=True)
    (tmp_path / "deep" / "a" / "b" / "docs.jsonl").write_bytes(_jsonl(DOCS))
    assert _ingest(tmp_path, tmp_path / "deep" / "**" / "*.jsonl").counts.documents == len(DOCS)


def test_parquet_fields_of_other_types_are_rejected_by_field(tmp_path):
    rows = pl.DataFrame({"_id": ["d0", "d1", "d2", None, "d4"], "text": ["a", "b", "c", "d", "e"],
                         "title": [1.5, None, None, None, None]})
    rows.write_parquet(tmp_path / "corpus.parquet")
    summary = _ingest(tmp_path, tmp_path / "corpus.parquet")
    assert _rejects(summary)[:2] == [("corpus.parquet", 1, "title", "wrong_type"),
                                     ("corpus.parquet", 4, "_id", "missing_field")]
    (tmp_path / "corpus.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match=r"corpus\.parquet: not a readable parquet file"):
        _ingest(tmp_path, tmp_path / "corpus.parquet")

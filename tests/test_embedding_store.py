"""The embedding store on its own (random vectors, no model): lookups through the key index, checksums, damaged and
half-written parts, compaction under a concurrent reader, and the index as a cache rebuilt from the parts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from negforge.tasks.embedding.store import COMPACT_AT, INDEX, DamagedPart, EmbeddingStore
from negforge.tasks.ingest.text import text_hash

DIM = 8


def _keys(start: int, stop: int) -> pl.Series:
    return pl.Series("text_hash", [text_hash(f"text {i}") for i in range(start, stop)])


def _vectors(start: int, stop: int) -> np.ndarray:
    return np.random.default_rng(start).standard_normal((stop - start, DIM)).astype(np.float32)


def _lookup(store: EmbeddingStore, start: int, stop: int) -> pl.DataFrame:
    found, damaged = store.lookup(pl.DataFrame({"text_hash": _keys(start, stop)}))
    assert damaged == ()
    return found


def _stored_vectors(store: EmbeddingStore, found: pl.DataFrame) -> np.ndarray:
    """The vectors of looked-up keys, read from their parts."""
    return np.stack([store.read(part)[1][row] for part, row in found.select("part", "part_row").iter_rows()])


@pytest.fixture
def store(tmp_path) -> EmbeddingStore:
    store = EmbeddingStore(tmp_path, "fingerprint")
    store.put(_keys(0, 10), _vectors(0, 10))
    store.put(_keys(10, 25), _vectors(10, 25))
    return store


def test_lookup_finds_stored_keys_in_one_join_and_reads_their_vectors(store):
    found = _lookup(store, 5, 30)
    assert found["text_hash"].to_list() == _keys(5, 30).to_list()  # the asked order
    assert found["part"].is_null().to_list() == [False] * 20 + [True] * 5
    np.testing.assert_array_equal(_stored_vectors(store, found.head(20)),
                                  np.concatenate([_vectors(0, 10)[5:], _vectors(10, 25)]))
    assert (store.folder / INDEX).exists()


def test_a_part_failing_its_checksum_is_set_aside_and_its_keys_are_no_longer_found(store):
    found = _lookup(store, 0, 25)
    part = found["part"][0]
    data = bytearray((store.folder / part).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern inside the vectors: parquet itself would not notice
    (store.folder / part).write_bytes(bytes(data))
    with pytest.raises(DamagedPart, match="checksum"):
        store.read(part)
    assert (store.folder / f"damaged-{part}").exists() and not (store.folder / part).exists()
    assert _lookup(store, 0, 25)["part"].is_null().sum() == 10


def test_a_truncated_part_is_reported_by_the_lookup_and_never_used(store):
    part = store.parts()[0]
    keys = store.read(part.name)[0]
    part.write_bytes(part.read_bytes()[:100])
    found, damaged = store.lookup(pl.DataFrame({"text_hash": _keys(0, 25)}))
    assert damaged == (part.name,)
    assert found.filter(pl.col("part").is_null())["text_hash"].sort().to_list() == keys.sort().to_list()
    assert store.remove_damaged() == [f"damaged-{part.name}"]
    assert [p.name for p in store.folder.iterdir() if "damaged" in p.name] == []


def test_gc_removes_parts_damaged_since_they_were_indexed(store):
    _lookup(store, 0, 25)  # both parts are in the index now
    part = store.parts()[1]
    part.write_bytes(part.read_bytes()[:-10])
    assert store.remove_damaged() == [f"damaged-{part.name}"]
    assert len(store.parts()) == 1


def test_negforge_gc_removes_unreadable_store_parts(tmp_path):
    store = EmbeddingStore(tmp_path / "work" / "embeddings", "fingerprint")
    store.put(_keys(0, 10), _vectors(0, 10))
    (tmp_path / "work" / "runs" / "r1").mkdir(parents=True)
    (tmp_path / "work" / "runs" / "r1" / "fingerprints.json").write_text('["fingerprint"]')  # kept by a kept run
    part = store.parts()[0]
    part.write_bytes(part.read_bytes()[:50])
    done = subprocess.run([sys.executable, "-m", "negforge.flows.cli", "gc", "--workdir", str(tmp_path / "work"),
                           "--registry", str(tmp_path / "registry")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "removed 1 damaged embedding-store parts" in done.stdout
    assert store.parts() == [] and not list(store.folder.glob("damaged-*"))


def test_a_killed_writer_leaves_no_visible_part(tmp_path):
    store = EmbeddingStore(tmp_path, "fingerprint")
    script = ("import os, signal, numpy as np, polars as pl\n"
              "from negforge.tasks.embedding.store import EmbeddingStore\n"
              "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)  # die with the bytes written\n"
              f"EmbeddingStore({str(tmp_path)!r}, 'fingerprint').put(pl.Series(['f' * 32]), np.ones((1, 8), 'f4'))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert done.returncode == -signal.SIGKILL
    (temporary,) = store.folder.glob(".part-*.tmp-*")
    assert temporary.stat().st_size > 0 and store.parts() == []
    assert _lookup(store, 0, 1)["part"].null_count() == 1
    assert store.remove_damaged() == []  # a fresh temporary may be a live writer's
    os.utime(temporary, (0, 0))
    assert store.remove_damaged() == [temporary.name]


def test_the_index_is_rebuilt_from_parts_it_does_not_list(store):
    _lookup(store, 0, 25)
    store.put(_keys(25, 30), _vectors(25, 30))  # written after the index
    assert _lookup(store, 0, 30)["part"].null_count() == 0
    (store.folder / INDEX).write_bytes(b"not parquet")
    found = _lookup(store, 0, 30)
    assert found["part"].null_count() == 0
    np.testing.assert_array_equal(_stored_vectors(store, found),
                                  np.concatenate([_vectors(0, 10), _vectors(10, 25), _vectors(25, 30)]))
    assert pl.read_parquet(store.folder / INDEX).height == 30


def test_a_retried_writer_finds_the_part_it_wrote(store):
    part = store.written(_keys(0, 10))
    assert part is not None and store.read(part)[0].to_list() == _keys(0, 10).to_list()
    assert store.written(_keys(0, 9)) is None


def test_compaction_merges_small_parts_keeps_lookups_and_a_reader_holding_an_old_plan_finds_the_keys(store):
    for start in range(25, 25 + 5 * COMPACT_AT, 5):
        store.put(_keys(start, start + 5), _vectors(start, start + 5))
    store.put(_keys(0, 5), _vectors(0, 5))  # a key stored twice is merged once
    before = _lookup(store, 0, 25 + 5 * COMPACT_AT)
    vectors = _stored_vectors(store, before)
    assert store.needs_compaction() and len(store.parts()) == 3 + COMPACT_AT

    merged = store.compact()
    assert len(merged) == 1 and store.parts() == [store.folder / merged[0]]
    assert store.read(merged[0])[0].n_unique() == store.read(merged[0])[0].len() == 25 + 5 * COMPACT_AT
    after = _lookup(store, 0, 25 + 5 * COMPACT_AT)
    np.testing.assert_array_equal(_stored_vectors(store, after), vectors)
    with pytest.raises(FileNotFoundError):  # the reader's plan names a part that is gone: it looks the keys up again
        store.read(before["part"][0])
    assert not store.needs_compaction() and store.compact() == []


def test_compaction_is_skipped_while_another_process_holds_the_lock(store):
    script = ("import fcntl, sys, time\n"
              f"handle = open({str(store.folder / '.lock')!r}, 'a'); fcntl.flock(handle, fcntl.LOCK_EX)\n"
              "print('held', flush=True); sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert store.compact() is None
        assert _lookup(store, 0, 25)["part"].null_count() == 0  # lookups never wait for the lock
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)

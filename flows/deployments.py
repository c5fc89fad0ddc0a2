"""Deployments, two per dataset config, `build-training-set/<dataset>` and `evaluate-training-set/<dataset>`;
serving them; triggering runs.

A deployment's parameters hold the dataset's full build config (so the Prefect UI draws a typed, documented form
pre-filled with it, and the server refuses a bad value before a run is created); its schedule comes from the
config's `schedule` section, which never changes what is published. The evaluation deployment (on demand) takes
the version (default `latest`) and the `evaluate` section, pre-filled from the config. Each deployment has a concurrency
limit of one run that queues the others (ENQUEUE): one deployment per dataset, so at most one run per dataset executes
at a time. A crashed run's slot is freed by the server's lease service; `negforge build` runs outside deployments are
not counted, and the registry's lock keeps their publishes apart.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from negforge.schemas.config import (
    NOT_RECORDED,
    BuildConfig,
    ConfigError,
    apply_overrides,
    load_config,
    map_paths,
    validate_config,
)

# Where configs are looked for when none are given: under the working directory, never the source tree (an installed
# wheel has none). Relative paths inside a config stay relative to its file (schemas/config.py).
DATASETS = Path("deployments") / "datasets"
DEMO_CONFIG = DATASETS / "scifact-demo.yaml"
LOCAL_API = "http://127.0.0.1:4200/api"  # where `negforge serve` starts its server when PREFECT_API_URL is unset


class NoPrefectAPI(RuntimeError):
    """No Prefect API answers at the configured (or default local) address."""


def _not_found(what: str, option: str) -> ConfigError:
    return ConfigError(f"{what} in {Path.cwd()}; pass --config {option}")


def demo_config() -> Path:
    """The build config a command without --config uses: the demo, in the working directory."""
    if not DEMO_CONFIG.is_file():
        raise _not_found(f"no --config given and no {DEMO_CONFIG}", "FILE")
    return DEMO_CONFIG


def config_files(paths: list[Path] | None) -> list[Path]:
    """The given build YAMLs, a folder standing for every *.yaml in it; none given: those in ./deployments/datasets."""
    if not paths:
        files = sorted(DATASETS.glob("*.yaml"))
        if not files:
            raise _not_found(f"no --config given and no {DATASETS}/*.yaml", "FILE_OR_FOLDER")
        return files
    files = []
    for path in paths:
        found = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
        if not found:
            raise ConfigError(f"{path}: a folder without *.yaml dataset configs")
        files += found
    return files


def dataset_configs(paths: list[Path] | None) -> list[tuple[Path, BuildConfig]]:
    """The dataset configs of `config_files`, loaded; dataset names must be unique."""
    configs = [(path, load_config(path)) for path in config_files(paths)]
    names = [config.publish.dataset for _, config in configs]
    if len(set(names)) != len(names):
        raise ConfigError(f"two configs publish the same dataset: {sorted(n for n in names if names.count(n) > 1)}")
    return configs


def parameters(config: BuildConfig) -> dict[str, Any]:
    """A deployment's parameters: its config, without `storage` (the Prefect UI shows parameters; a deployment's
    runs take store credentials from their process's environment)."""
    return {"config": config.model_dump(mode="json", by_alias=True, exclude=NOT_RECORDED)}


# One run per deployment, and so per dataset, at a time; the others wait.
ONE_RUN_AT_A_TIME = {"limit": 1, "collision_strategy": "ENQUEUE"}


def _described(path: Path, config: BuildConfig) -> dict[str, Any]:
    """What the served and the prefect.yaml deployment of a dataset config share."""
    from negforge.flows.orchestration.task_options import run_tags  # imports Prefect: kept off the config checks' path

    dataset = config.publish.dataset
    return {"name": dataset, "description": f"Build and publish {dataset} (from {path.name}).",
            "tags": run_tags(dataset), "enforce_parameter_schema": True}


def _schedules(config: BuildConfig) -> list[dict[str, Any]]:
    return [config.schedule.model_dump()] if config.schedule.cron else []


def runner_deployment(path: Path, config: BuildConfig):
    """The served deployment of one dataset config."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.schedules import Cron

    from negforge.flows.build_then_evaluate import build_and_evaluate

    return build_and_evaluate.to_deployment(
        **_described(path, config), parameters=parameters(config),
        schedules=[Cron(s["cron"], timezone=s["timezone"], active=s["active"]) for s in _schedules(config)],
        concurrency_limit=ConcurrencyLimitConfig(**ONE_RUN_AT_A_TIME))


def evaluate_parameters(raw: dict[str, Any]) -> dict[str, Any]:
    """The evaluation deployment's defaults, from a dataset's dumped config: the latest version, its registry and
    its `evaluate` section."""
    return {"dataset": raw["publish"]["dataset"], "version": "latest", "registry": raw["publish"]["registry"],
            "settings": dict(raw["evaluate"])}


def _evaluation_described(path: Path, config: BuildConfig) -> dict[str, Any]:
    return _described(path, config) | {
        "description": f"Fine-tune a model on a version of {config.publish.dataset} and measure it (from {path.name})."}


def evaluate_deployment(path: Path, config: BuildConfig):
    """The served evaluation deployment of one dataset config (on demand; one run at a time)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig

    from negforge.flows.evaluate import evaluate_training_set

    return evaluate_training_set.to_deployment(
        **_evaluation_described(path, config), parameters=evaluate_parameters(parameters(config)["config"]),
        concurrency_limit=ConcurrencyLimitConfig(**ONE_RUN_AT_A_TIME))


def serve(paths: list[Path] | None) -> None:
    """Serve every dataset's deployments from this process until it is stopped."""
    from prefect import serve as prefect_serve

    prefect_serve(*[deployment(path, config) for path, config in dataset_configs(paths)
                    for deployment in (runner_deployment, evaluate_deployment)])


def _relative(raw: dict[str, Any], root: Path) -> dict[str, Any]:
    """Local paths under `root` made relative to it: a work pool's worker runs the flow there."""
    return map_paths(raw, lambda value: str(Path(value).relative_to(root)) if Path(value).is_relative_to(root)
                     else value)


def _entrypoint(flow) -> str:
    """Where a work pool's worker imports the flow from, read off the flow itself."""
    return f"{flow.fn.__module__}:{flow.fn.__name__}"


def prefect_yaml(paths: list[Path] | None, pool: str = "negforge") -> str:
    """deployments/prefect.yaml for `prefect deploy --all`: one deployment per dataset config on a process pool.

    Generated from the dataset configs (`negforge deployments render`), so the two never disagree; paths are
    relative to the working directory it is rendered in, where the pull step puts the worker ($NEGFORGE_ROOT).
    """
    from negforge.flows.build_then_evaluate import ENTRYPOINT
    from negforge.flows.evaluate import evaluate_training_set

    deployments = []
    for path, config in dataset_configs(paths):
        relative = _relative(parameters(config)["config"], Path.cwd())
        deployments.append({
            **_described(path, config), "entrypoint": ENTRYPOINT,
            "parameters": {"config": relative},
            "schedules": _schedules(config), "concurrency_limit": dict(ONE_RUN_AT_A_TIME),
            "work_pool": {"name": pool, "work_queue_name": "default"},
        })
        deployments.append({
            **_evaluation_described(path, config), "entrypoint": _entrypoint(evaluate_training_set),
            "parameters": evaluate_parameters(relative), "schedules": [],
            "concurrency_limit": dict(ONE_RUN_AT_A_TIME), "work_pool": {"name": pool, "work_queue_name": "default"},
        })
    document = {
        "name": "negforge", "prefect-version": _prefect_version(),
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $NEGFORGE_ROOT }}"}}],
        "deployments": deployments,
    }
    header = ("# Generated by `negforge deployments render` from deployments/datasets/*.yaml: edit those, then "
              "render again.\n# Use: export NEGFORGE_ROOT=$PWD; prefect work-pool create negforge --type process;\n"
              "#      prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml; "
              "prefect worker start --pool negforge\n")
    return header + yaml.safe_dump(document, sort_keys=False, width=120)


def _prefect_version() -> str:
    from importlib import metadata

    return metadata.version("prefect")


def api_url() -> str:
    """The Prefect API to talk to: PREFECT_API_URL, else the local one `negforge serve` starts; it must answer."""
    import httpx

    url = os.environ.get("PREFECT_API_URL") or LOCAL_API
    try:
        healthy = httpx.get(f"{url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        healthy = False
    if not healthy:
        raise NoPrefectAPI(f"no Prefect API answers at {url}. Start one with `negforge serve` (it starts a local "
                           f"server on 127.0.0.1:4200 when PREFECT_API_URL is unset), or set PREFECT_API_URL to "
                           f"a running server")
    return url


def trigger(dataset: str, overrides: list[str], wait: bool) -> int:
    """Start a run of the dataset's deployment with the stored config plus `overrides`; 0 unless it failed."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from negforge.flows.build import build_training_set

    name = f"{build_training_set.name}/{dataset}"
    url = api_url()
    with temporary_settings(updates={PREFECT_API_URL: url}):
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        with get_client(sync_client=True) as client:
            try:
                deployment = client.read_deployment_by_name(name)
            except ObjectNotFound:
                raise ConfigError(f"no deployment {name} at {url}; serve or deploy its config first") from None
        stored = deployment.parameters["config"]
        config = validate_config(apply_overrides(stored, overrides), f"{name} with --set")
        run = run_deployment(deployment.id, parameters=parameters(config), timeout=None if wait else 0,
                             poll_interval=2)
        ui = url.removesuffix("/api")
        print(f"flow run {run.name}: {ui}/runs/flow-run/{run.id}")
        if not wait:
            return 0
        print(f"{run.state.name}: {run.state.message or ''}".strip())
        return 0 if run.state.is_completed() else 1

"""The `negforge` command line."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from negforge.flows.orchestration.console_lines import escape_console_lines
from negforge.flows.orchestration.prefect_server import quiet_environment
from negforge.schemas.console_text import printable_lines, quoted

if TYPE_CHECKING:  # imported where used: every command pays for the CLI's imports
    from negforge.schemas.evaluation import Evaluated
    from negforge.schemas.manifest import Published

# Defaults are looked for in the working directory (flows/deployments.py), never in the source tree.
DEMO_HELP = "the demo, deployments/datasets/scifact-demo.yaml in the working directory"
CONFIGS_HELP = ("dataset build YAML or a folder of them (repeatable; default: deployments/datasets/ in the working "
                "directory)")
REGISTRY_HELP = "registry folder (default: the demo config's, else ./registry)"


def _count(text: str) -> int:
    """An argument that counts things: a whole number, 0 or more (a negative count would slice from the other end)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {quoted(text)}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="negforge", description="Mine hard negatives and publish training sets.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build and publish a training set")
    build.add_argument("--config", type=Path, default=None,
                       help=f"build YAML (default: {DEMO_HELP})")
    build.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                       help="override a config field; the value is parsed as YAML (repeatable)")
    remine = commands.add_parser("remine", help="a new version from the candidates stored in an earlier one")
    remine.add_argument("--from", dest="source", required=True, metavar="DATASET@VERSION",
                        help="the version whose stored candidates are mined again")
    remine.add_argument("--registry", default=None, help=REGISTRY_HELP)
    remine.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a mine/output/validate/publish field of the source's config (repeatable)")
    calibrate = commands.add_parser("calibrate", help="run mine.strategy auto's calibration alone on a version's "
                                                      "stored calibration candidates and print its table and choice")
    calibrate.add_argument("target", metavar="DATASET[@VERSION]", help="the dataset (default version: LATEST)")
    calibrate.add_argument("--registry", default=None, help=REGISTRY_HELP)
    calibrate.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                           help="override a mining option of the version's config (repeatable)")
    evaluate = commands.add_parser("evaluate", help="fine-tune a model on a version and measure it against the base "
                                                    "model (or compare two training sets)")
    evaluate.add_argument("target", nargs="?", metavar="DATASET@VERSION", help="the version (or DATASET@latest)")
    evaluate.add_argument("--compare", nargs=2, metavar=("DATASET@A", "B"),
                          help="train A and B with the same seeds and compare them; B is another version "
                               "(DATASET@VERSION or VERSION) or a baseline re-mined from A: plain or random")
    evaluate.add_argument("--eval", dest="eval_dir", default=None, metavar="BEIR_DIR",
                          help="evaluation data: corpus.jsonl, queries.jsonl, qrels/<split>.tsv (default: the "
                               "version config's evaluate.eval)")
    evaluate.add_argument("--split", default=None, help="qrels split to evaluate on (default test)")
    evaluate.add_argument("--seeds", type=int, default=None, help="fine-tuning runs with different seeds (default 1)")
    evaluate.add_argument("--save-model", default=None, metavar="DIR",
                          help="keep the fine-tuned models in DIR/<version>-seed<seed> (default: dropped)")
    evaluate.add_argument("--registry", default=None, help=REGISTRY_HELP)
    evaluate.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                          help="an evaluate setting, e.g. steps=4 or evaluate.max_queries=20 (repeatable)")
    versions = commands.add_parser("versions", help="list, show, verify, compare or roll back published versions")
    actions = versions.add_subparsers(dest="action", required=True)
    for name, extra, text in (("list", [], "versions of a dataset"), ("show", ["version"], "one version's manifest"),
                              ("diff", ["a", "b"], "what changed between two versions"),
                              ("rollback", ["version"], "point LATEST at an older version (deletes nothing)")):
        action = actions.add_parser(name, help=text)
        action.add_argument("dataset")
        for positional in extra:
            action.add_argument(positional)
        action.add_argument("--registry", default=None, help=REGISTRY_HELP)
    verify = actions.add_parser("verify", help="check every file's size and sha256 against the manifest")
    verify.add_argument("target", nargs="?", default=None, metavar="DATASET[@VERSION]",
                        help="one dataset or version (default: every version of every dataset)")
    verify.add_argument("--registry", default=None, help=REGISTRY_HELP)
    serve = commands.add_parser("serve", help="serve the datasets' deployments (and a local Prefect server if "
                                              "PREFECT_API_URL is unset) until stopped")
    serve.add_argument("--config", dest="configs", type=Path, action="append", default=[], help=CONFIGS_HELP)
    serve.add_argument("--port", type=int, default=4200, help="port of the local Prefect server (default 4200)")
    trigger = commands.add_parser("trigger", help="start a run of a dataset's deployment through the Prefect API")
    trigger.add_argument("dataset")
    trigger.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                         help="override a field of the deployment's stored config (repeatable)")
    trigger.add_argument("--wait", action="store_true", help="follow the run to its end and exit with its status")
    deployments = commands.add_parser("deployments", help="write deployments/prefect.yaml from the dataset configs")
    deployments.add_argument("action", choices=["render"])
    deployments.add_argument("--config", dest="configs", type=Path, action="append", default=[], help=CONFIGS_HELP)
    deployments.add_argument("--pool", default="negforge", help="process work pool name (default negforge)")
    gc = commands.add_parser("gc", help="remove old run workspaces, unreferenced embedding-store entries and "
                                        "staging folders of builds that are gone")
    gc.add_argument("--config", type=Path, default=None,
                    help=f"build YAML naming the workdir and registry (only those are read; default: {DEMO_HELP})")
    gc.add_argument("--registry", default=None, help="registry folder (wins over the config's)")
    gc.add_argument("--workdir", default=None, help="workdir (wins over the config's)")
    gc.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="override a publish/runtime field of the config (repeatable)")
    gc.add_argument("--keep-runs", type=_count, default=3, help="newest run workspaces to keep (default 3)")
    gc.add_argument("--dry-run", action="store_true", help="only report what would be removed")
    return parser


def cmd_versions(args: argparse.Namespace) -> int:
    from negforge.flows import registry_commands

    args.registry = _default_registry(args)
    return getattr(registry_commands, f"versions_{args.action}")(args)


def cmd_gc(args: argparse.Namespace) -> int:
    from negforge.flows.deployments import demo_config
    from negforge.flows.registry_commands import gc
    from negforge.schemas.config import ConfigError, StorageConfig, read_config, validate_config
    from negforge.tasks.registry.registries import on_object_store

    path = args.config or (None if args.registry and args.workdir else demo_config())
    raw = read_config(path, args.overrides) if path else {}
    storage = validate_config(raw, str(path or "defaults"), StorageConfig)
    workdir = args.workdir or storage.runtime.workdir
    if on_object_store(workdir):
        raise ConfigError(f"runtime.workdir {workdir}: gc does not reach a workdir on an object store yet; give "
                          f"--workdir a local folder (with --registry) or expire the store's runs/ with its own "
                          f"lifecycle rules")
    return gc(args, workdir, args.registry or storage.publish.registry, storage.storage)


class _NoTaskRunLines(logging.Filter):
    """Drops the console's per-task-run INFO lines ("Finished in state Completed()"): stages show progress bars
    instead. Warnings and errors pass; the Prefect UI still gets every line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "prefect.task_runs" or record.levelno >= logging.WARNING


def _quiet_task_runs() -> None:
    """Without --debug: no per-task-run lines on this process's console, nor on local Dask workers' consoles."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger("prefect").handlers + logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(_NoTaskRunLines())
    os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "WARNING"  # read by local workers when they start


def _print_result(result: Published) -> int:
    """A build's or remine's counts, its evaluation's record, then the version folder last."""
    print(f"{result.counts.rows} training rows from {result.counts.queries_used} queries; "
          f"{result.embed.texts_embedded} texts embedded, {result.embed.texts_cached} from the store; "
          f"{result.short_queries} queries short of negatives")
    if result.evaluation:
        print(f"evaluated: {result.evaluation.path}")
    if not result.published:
        print("up to date")
    print(result.version_dir)
    return 0


def _default_registry(args: argparse.Namespace) -> str:
    """--registry, else the demo config's publish.registry when the working directory has it, else the default
    (./registry): these commands take no --config, so a missing demo is no error."""
    from negforge.flows.deployments import DEMO_CONFIG
    from negforge.schemas.config import PublishConfig, load_config

    if args.registry:
        return args.registry
    return load_config(DEMO_CONFIG).publish.registry if DEMO_CONFIG.is_file() else PublishConfig().registry


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived. A KeyboardInterrupt, so that no `except Exception` takes it for a failure: the flow
    run ends Crashed ("aborted by an interrupt signal"), and its Dask cluster and local server close on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _stop_on_signals() -> Iterator[list[int]]:
    """Raise `Stopped` in the main thread on the first SIGINT or SIGTERM; later ones, which would interrupt the
    cleanup, are ignored. Yields the signals received.

    During a flow run Prefect's own SIGTERM handler comes first: it records the crash, puts this handler back and
    sends the signal again.
    """
    received = []

    def stop(signum: int, frame: object) -> None:
        if not received:
            received.append(signum)
            raise Stopped(signum)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop_in_disguise(error: Exception, received: list[int]) -> int | None:
    """The signal that `error` stands for, if any. A stop is raised wherever the main thread is (`Stopped` by this
    CLI's handler, TerminationSignal by Prefect's SIGTERM handler); raised inside pydantic-core's serializer it comes
    out as a PydanticSerializationError naming it (seen under load, for both), which would end the run as a failure
    with exit code 1 instead of a stop."""
    from pydantic_core import PydanticSerializationError

    if not isinstance(error, PydanticSerializationError):
        return None
    if received:
        return received[0]
    return signal.SIGTERM if "TerminationSignal" in str(error) else None


def _published_before_the_stop(earlier: int) -> str:
    """What a stopped run leaves published: nothing, or the versions it published before the stop (a build stopped
    while it evaluates what it published); those of runs before it in this process (`earlier` of them: tests run
    many) and a scratch registry's versions, gone with their folder, do not count."""
    from negforge.tasks.registry.versions import published_here

    versions = [str(path) for path in published_here()[earlier:] if path.exists()]
    return f"published before the stop: {', '.join(versions)}" if versions else "nothing was published"


def _run_flow(args: argparse.Namespace, dataset: str, prepare: Callable[[], Callable[[], Published | Evaluated]],
              report: Callable[[Evaluated], int] | None = None,
              cluster: Callable[[], AbstractContextManager] | None = None) -> int:
    """Run a flow against the Prefect API (a local one when none is set) and print its result.

    `prepare` imports the flow and returns the call that runs it; it runs while a local server starts, and while
    `cluster` (the run's Dask cluster, started early) starts. The run is
    tagged with the dataset, as deployment runs are. SIGINT or SIGTERM stops it with one line and exit code 128 +
    the signal's number, after the local server and Dask cluster it started have stopped.
    """
    from negforge.flows.orchestration.prefect_server import prefect_api
    from negforge.flows.orchestration.task_options import dataset_tags
    from negforge.tasks.registry.versions import published_here

    earlier = len(published_here())
    try:
        with _stop_on_signals() as received, prefect_api() as api_ready:
            if not args.debug:  # before the cluster starts: its workers read the console level when they start
                _quiet_task_runs()
            with (cluster or nullcontext)():
                run = prepare()
                api_ready()
                with dataset_tags(dataset):
                    try:
                        result = run()
                    except Exception as error:
                        signum = _stop_in_disguise(error, received)
                        if signum:
                            raise Stopped(signum) from None
                        raise
    except Stopped as stopped:
        print(f"negforge: stopped by {signal.Signals(stopped.signum).name}; {_published_before_the_stop(earlier)}",
              file=sys.stderr)
        return 128 + stopped.signum
    finally:
        gc.freeze()  # the process ends next: spare it the last full collection of ~750k objects (seconds when busy)
    return (report or _print_result)(result)  # after the local server stopped, so the path is the last line


def cmd_remine(args: argparse.Namespace) -> int:
    from negforge.flows.orchestration.preflight import check_object_stores, check_scheduler
    from negforge.schemas.config import ConfigError
    from negforge.tasks.registry.candidates import check_depth, check_remine, load_candidates
    from negforge.tasks.registry.registries import open_registry

    dataset, sep, version = args.source.partition("@")
    if not sep or not version:
        raise ConfigError(f"--from {args.source!r}: expected DATASET@VERSION, e.g. scifact-demo@v0001")
    registry = open_registry(_default_registry(args), dataset)
    parent = registry.whole_manifest(version)
    config = parent.build_config({"publish": {"registry": str(registry.folder.parent)}}, args.overrides,
                                 f"{args.source} config")
    stored = load_candidates(registry.local_copy(version) / "candidates")
    check_remine(parent.build_config(), config, stored)  # refuse before any run starts
    if config.mine.strategy == "fixed":
        check_depth(config, stored)  # with auto, the window is the calibration's choice's: judged in the flow
    check_scheduler(config.runtime)
    check_object_stores(config)

    def prepare() -> Callable[[], Published]:
        from negforge.flows.remine import remine_training_set

        return lambda: remine_training_set(version, config)

    return _run_flow(args, config.publish.dataset, prepare)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from negforge.flows.calibrate import calibrate_version

    print("\n".join(calibrate_version(_default_registry(args), args.target, args.overrides)))
    return 0


def _dataset_version(text: str, option: str) -> tuple[str, str]:
    from negforge.schemas.config import ConfigError

    dataset, sep, version = text.partition("@")
    if not sep or not dataset or not version:
        raise ConfigError(f"{option} {text!r}: expected DATASET@VERSION, e.g. scifact-demo@v0001 (or @latest)")
    return dataset, version


def evaluate_settings(args: argparse.Namespace, registry: str, dataset: str, version: str):
    """The version config's `evaluate` section, then --set, then the flags."""
    from negforge.schemas.config import EvaluateConfig, apply_overrides, validate_config
    from negforge.tasks.registry.registries import open_registry

    store = open_registry(registry, dataset)
    name = store.latest() if version == "latest" else version
    stored = store.manifest(name).build_config().evaluate.model_dump(mode="json") if name else {}
    raw = apply_overrides(stored, [o.removeprefix("evaluate.") for o in args.overrides])
    flags = {"eval": args.eval_dir and str(Path(args.eval_dir).resolve()), "split": args.split,
             "seeds": args.seeds}
    return validate_config(raw | {k: v for k, v in flags.items() if v is not None}, "evaluate", EvaluateConfig)


def _print_evaluation(result: Evaluated) -> int:
    """The evaluation's metrics, its gain (and a comparison's difference), then the record's path last."""
    record = result.record
    metrics = record.metrics
    print(f"{record.dataset} {record.version} on {record.evaluation.split} ({record.evaluation.queries} queries): "
          + ", ".join(f"{m} {metrics.base[m]:.4f} -> {metrics.fine_tuned[m]:.4f}" for m in metrics.base))
    print(f"nDCG@10 gain over the base model: {record.gain.text()}")
    if result.comparison:
        print(f"nDCG@10 of {result.comparison.b.name} minus {result.comparison.a.name}: "
              f"{result.comparison.difference.text()}")
    print(result.path)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from negforge.schemas.config import ConfigError

    if bool(args.target) == bool(args.compare):
        raise ConfigError("give either DATASET@VERSION or --compare DATASET@A B")
    dataset, version = _dataset_version(args.compare[0] if args.compare else args.target,
                                        "--compare" if args.compare else "evaluate")
    compare = None
    if args.compare:
        other, _, compare = args.compare[1].rpartition("@")
        if other and other != dataset:
            raise ConfigError(f"--compare {args.compare[1]!r}: both training sets must be versions of {dataset}")
    registry = _default_registry(args)
    settings = evaluate_settings(args, registry, dataset, version)
    from negforge.flows.evaluate import check_request

    check_request(registry, dataset, version, settings, compare, args.save_model)  # refuse before any run starts

    def prepare() -> Callable[[], Evaluated]:
        from negforge.flows.evaluate import evaluate_training_set

        return lambda: evaluate_training_set(dataset, version, registry, settings, compare, args.save_model)

    return _run_flow(args, dataset, prepare, _print_evaluation)


def cmd_build(args: argparse.Namespace) -> int:
    from negforge.flows.deployments import demo_config
    from negforge.flows.orchestration.preflight import (
        check_budget_for_the_model,
        check_object_stores,
        check_scheduler,
    )
    from negforge.schemas.config import load_config
    from negforge.tasks.calibration.calibrate import replaced_fields
    from negforge.tasks.registry.up_to_date import unchanged_version, up_to_date_result
    from negforge.tasks.registry.versions_info import code_version

    config = load_config(args.config or demo_config(), args.overrides)
    replaced = replaced_fields(config)
    if replaced:
        print(f"negforge: mine.strategy auto mines with the setting calibration chooses (or its default), not with "
              f"{', '.join(replaced)} as set; set mine.strategy=fixed to mine with them", file=sys.stderr)
    unchanged = unchanged_version(config, code_version())
    if unchanged:  # before any Prefect server or Dask cluster starts: the UI shows no run for this
        return _print_result(up_to_date_result(config, unchanged))
    check_scheduler(config.runtime)  # before the Prefect server, the cluster and the flow run: refused at once
    check_object_stores(config)
    check_budget_for_the_model(config)

    def prepare() -> Callable[[], Published]:
        from negforge.flows.build_then_evaluate import build_training_set, evaluate_published
        from negforge.tasks.gate import expectations  # noqa: F401  (Great Expectations too; validation needs it later)

        def build_then_evaluate() -> Published:
            built = build_training_set(config)
            return built.model_copy(update={"evaluation": evaluate_published(config, built)})

        return build_then_evaluate

    def cluster() -> AbstractContextManager:
        from negforge.flows.orchestration.dask_cluster import local_cluster_started_early
        from negforge.flows.stages.embedding import model_warm_up

        return local_cluster_started_early(config.runtime, model_warm_up(config))

    return _run_flow(args, config.publish.dataset, prepare, cluster=cluster)


def cmd_serve(args: argparse.Namespace) -> int:
    import os
    import signal

    from negforge.flows import deployments
    from negforge.flows.orchestration.prefect_server import local_server

    deployments.dataset_configs(args.configs)  # refuse bad configs before a server starts
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the local server too, not only this process
    started = nullcontext(os.environ.get("PREFECT_API_URL")) if os.environ.get("PREFECT_API_URL") else \
        local_server(args.port)
    with started as api:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        os.environ["PREFECT_API_URL"] = api  # for the flow-run processes serve starts
        print(f"Prefect API {api}; UI {api.removesuffix('/api')}", flush=True)
        with temporary_settings(updates={PREFECT_API_URL: api}):  # settings were read at import
            deployments.serve(args.configs)
    return 0


def cmd_trigger(args: argparse.Namespace) -> int:
    from negforge.flows import deployments

    return deployments.trigger(args.dataset, args.overrides, args.wait)


def cmd_deployments(args: argparse.Namespace) -> int:
    from negforge.flows import deployments

    print(deployments.prefect_yaml(args.configs, args.pool), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    quiet_environment()
    args = _parser().parse_args(argv)
    escape_console_lines(tracebacks=args.debug)  # without --debug, a failed run's message lines say what went wrong
    from negforge.flows.deployments import NoPrefectAPI
    from negforge.flows.orchestration.preflight import StorageError
    from negforge.schemas.config import ConfigError
    from negforge.tasks.calibration.calibrate import CalibrationError
    from negforge.tasks.embedding.model import ModelError
    from negforge.tasks.evaluation.split import EvaluationError
    from negforge.tasks.gate.validate import ValidationFailed
    from negforge.tasks.ingest.readers import InputError
    from negforge.tasks.mining.lexical import LexicalError
    from negforge.tasks.registry.candidates import RemineError
    from negforge.tasks.registry.versions import NotFound
    from negforge.tasks.runtime.os_errors import describe, permanent
    from negforge.tasks.runtime.sizing import BudgetError
    from negforge.tasks.search.ann_index import IndexSettingError
    from negforge.tasks.storage.location import StoreError

    try:
        commands = {"build": cmd_build, "remine": cmd_remine, "calibrate": cmd_calibrate, "evaluate": cmd_evaluate,
                    "versions": cmd_versions, "gc": cmd_gc, "serve": cmd_serve, "trigger": cmd_trigger,
                    "deployments": cmd_deployments}
        return commands[args.command](args)
    except (ConfigError, InputError, ModelError, ValidationFailed, RemineError, NotFound, StorageError,
            NoPrefectAPI, IndexSettingError, BudgetError, CalibrationError, LexicalError, EvaluationError,
            StoreError) as error:
        if args.debug:
            raise
        print(f"negforge: error: {printable_lines(str(error))}", file=sys.stderr)
        return 1 if isinstance(error, ValidationFailed) else 2
    except OSError as error:  # not a folder, read-only, no permission, no space: the path says where
        if args.debug or not permanent(error):
            raise
        print(f"negforge: error: {printable_lines(describe(error))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

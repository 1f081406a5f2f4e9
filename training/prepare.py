"""Prepare: a source of labelled images -> a decoded uint8 cache + a seeded split manifest.

    source -> training.sources (scan, labels) -> training.cache (fingerprint, dask decode into a
    cache built atomically) -> training.split (seeded grouped split, manifest)

A re-run with the same inputs reuses the cache (and the manifest, if the seed matches). This module
runs the stages in order, summarises the result and owns `glasses-train prepare`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from glasses.config import (
    ALLOWED_SIZES,
    FRAMINGS,
    CLASS_NAMES,
    GROUP_COLUMNS,
    IMAGE_SIZE,
    PREPARE_SCHEDULER,
    SEED,
    SPLITS,
    WORK_DIR,
)
from training.cache import build_cache, cache_root, fingerprint, is_cache_of
from training.cli import UserError
from training.exclusions import exclusion_files, exclusion_records, excluded_ids
from training.sources import inventory, scan
from training.split import SPLIT_VERSION, write_manifest


@dataclass
class PreparedData:
    """What `prepare` produced (the manifest holds everything else)."""

    manifest_path: Path  # JSON split manifest
    cache_dir: Path  # images.npy (uint8 memmap, N x S x S x 3), labels.npy, index.json
    fingerprint: str
    counts: dict  # {"train": {"glasses": n, "no_glasses": n}, "val": {...}, "test": {...}}
    skipped: list[str]  # "file: reason" for files skipped as unreadable
    reused: bool  # cache reused from an earlier run
    excluded: dict = field(default_factory=dict)  # photos left out by exclusion files, per class
    exclusions: list[dict] = field(default_factory=list)  # per exclusion file: path, sha256, removed per class
    missing_images: list[str] = field(default_factory=list)  # labelled ids/files with no image
    unlabelled_images: list[str] = field(default_factory=list)  # images with no label
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0



def prepare(source: str, *, size: int = IMAGE_SIZE, exclude: bool = True, scheduler: str | None = None,
            work_dir: Path = WORK_DIR, seed: int = SEED, group_column: str | None = None,
            progress: bool = True, exclude_files: list = (), framing: str = "none") -> PreparedData:
    """Inventory `source` minus its exclusion files (training.exclusions: the paper's list for Kaggle
    unless exclude=False, plus `exclude_files`), build (or reuse) its uint8 cache (photos cropped around
    their faces with framing "face", glasses/faces.py), write the manifest."""
    if size not in ALLOWED_SIZES:
        raise UserError(f"--size must be one of {', '.join(map(str, ALLOWED_SIZES))}, got {size}")
    if framing not in FRAMINGS:
        raise UserError(f"--framing must be one of {', '.join(FRAMINGS)}, got {framing}")
    t0 = time.perf_counter()
    listing = scan(source, work_dir=Path(work_dir))
    files = exclusion_files(listing.kind, list(exclude_files), shipped=exclude)
    fp = fingerprint(listing, size, group_column=group_column, exclusions=[f.sha256 for f in files], framing=framing)
    cache_dir = cache_root(Path(work_dir)).resolve() / f"{listing.kind}-{size}-{fp[:16]}"
    reused = is_cache_of(cache_dir, fp)
    if not reused:
        inv = inventory(listing, group_column=group_column, excluded=excluded_ids(files))
        inv.exclusions = exclusion_records(files, inv.removed)
        if cache_dir.exists() and not is_cache_of(cache_dir, fp):  # not one a concurrent run just finished
            shutil.rmtree(cache_dir)  # same prefix, different fingerprint, or a foreign dir: replace it
        build_cache(inv, fp, size, cache_dir, scheduler, progress=progress, framing=framing)
    manifest_path = cache_dir / f"manifest-seed{seed}.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if manifest.get("split_version") != SPLIT_VERSION:
        manifest_path = write_manifest(cache_dir, seed)
        manifest = json.loads(manifest_path.read_text())
    return PreparedData(
        manifest_path=manifest_path,
        cache_dir=cache_dir,
        fingerprint=fp,
        counts=manifest["counts"],
        skipped=manifest["skipped"],
        reused=reused,
        excluded=manifest["excluded"],
        exclusions=manifest.get("exclusions", []),
        missing_images=manifest["missing_images"],
        unlabelled_images=manifest["unlabelled_images"],
        notes=manifest["notes"],
        seconds=time.perf_counter() - t0,
    )


def summary(p: PreparedData, *, limit: int = 10) -> str:
    """Human-readable summary of a prepare run (what the CLI prints)."""
    lines = []
    width = max(len(c) for c in CLASS_NAMES)
    lines.append(f"{'split':<6} " + " ".join(f"{c:>{width}}" for c in CLASS_NAMES) + f" {'total':>{width}}")
    for name in SPLITS:
        row = p.counts[name]
        lines.append(f"{name:<6} " + " ".join(f"{row[c]:>{width}}" for c in CLASS_NAMES)
                     + f" {sum(row.values()):>{width}}")
    if p.excluded and sum(p.excluded.values()):
        lines.append("excluded: " + ", ".join(f"{c} {p.excluded[c]}" for c in CLASS_NAMES)
                     + f" (total {sum(p.excluded.values())})")
    for record in p.exclusions:
        what = "the paper's list" if record.get("shipped") else record["file"]
        lines.append(f"  by {what} (sha256 {record['sha256'][:12]}, {record['listed']} ids): "
                     + ", ".join(f"{c} {record['removed'][c]}" for c in CLASS_NAMES))

    def listing(title: str, items: list[str]) -> None:
        lines.append(f"{title}: {len(items)}")
        for item in items[:limit]:
            lines.append(f"  {item}")
        if len(items) > limit:
            lines.append(f"  ... and {len(items) - limit} more (see manifest)")

    listing("skipped (unreadable)", p.skipped)
    if p.missing_images:
        listing("labelled but no image", p.missing_images)
    if p.unlabelled_images:
        listing("images without label", p.unlabelled_images)
    for note in p.notes:
        lines.append(f"note: {note}")
    lines.append(f"cache: {p.cache_dir} ({'reused' if p.reused else 'built'})")
    lines.append(f"manifest: {p.manifest_path}")
    lines.append(f"fingerprint: {p.fingerprint}")
    lines.append(f"time: {p.seconds:.2f} s")
    return "\n".join(lines)


def prepare_sources(sources: list[str], **kwargs) -> PreparedData:
    """One source: `prepare`; several: their deduplicated union, split by person (training.union)."""
    if len(sources) == 1:
        return prepare(sources[0], **kwargs)
    from training.union import prepare_union

    return prepare_union(sources, **kwargs)


def _run(args: argparse.Namespace) -> int:
    result = prepare_sources(args.source, size=args.size, exclude=not args.no_exclude, exclude_files=args.exclude,
                             scheduler=args.scheduler, work_dir=Path(args.work_dir), seed=args.seed,
                             group_column=args.group_column, framing=args.framing)
    print(summary(result))
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register `glasses-train prepare`."""
    p = subparsers.add_parser("prepare", help="decode, cache and split a dataset (kaggle, kaggle-dir:PATH, folders:PATH)")
    p.add_argument("--source", required=True, action="append",
                   help="kaggle | kaggle-dir:PATH (dir or .zip) | folders:PATH; repeat it to prepare the "
                        "deduplicated union of several sources, split by person")
    p.add_argument("--size", type=int, choices=ALLOWED_SIZES, default=IMAGE_SIZE, help="image side (default %(default)s)")
    p.add_argument("--framing", choices=FRAMINGS, default="none",
                   help="face: crop every photo to the training framing around its detected face (default %(default)s)")
    p.add_argument("--exclude", action="append", default=[], metavar="FILE",
                   help="leave out the photo ids listed in FILE (repeatable; e.g. from `review --apply`)")
    p.add_argument("--no-exclude", action="store_true",
                   help="keep the paper's 523 excluded Kaggle ids (files given with --exclude still apply)")
    p.add_argument("--scheduler", default=None,
                   help=f"threads | processes | tcp://HOST:PORT of a dask.distributed scheduler (default {PREPARE_SCHEDULER})")
    p.add_argument("--work-dir", default=str(WORK_DIR), help="where caches go (default %(default)s)")
    p.add_argument("--seed", type=int, default=SEED, help="split seed (default %(default)s)")
    p.add_argument("--group-column", default=None,
                   help=f"labels.csv column naming the person (default: first of {', '.join(GROUP_COLUMNS)})")
    p.set_defaults(func=_run)

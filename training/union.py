"""Union: several prepared sources -> one deduplicated cache and one split manifest, split by person.

    sources A, B, ...
      -> each prepared on its own (its own cache, reused when unchanged: training.prepare.prepare)
      -> sha1 of every readable file's bytes; byte-identical duplicates dropped (the first occurrence,
         in source order, is kept; duplicates with conflicting labels are reported)
      -> one uint8 cache WORK_DIR/cache/union-<size>-<fp16>/ (rows copied from the sources' caches),
         groups kept as they are, so a person (e.g. a celeba_identity) present in two sources is one
         group and lands in one split
      -> manifest-seed<SEED>.json written by the same split as a single source, plus `sources` (every
         source with its fingerprint, counts and duplicates) and, per split, the source of each row

The union's fingerprint is made of the sources' fingerprints, so it is as cheap to check as theirs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np

from glasses.config import IMAGE_SIZE, SEED, WORK_DIR
from glasses.files import write_json_atomic
from glasses.preprocessing import PREPROCESSING_VERSION
from training.cache import cache_root, is_cache_of
from training.cli import UserError
from training.split import SPLIT_VERSION, write_manifest

UNION_FORMAT = 1


def file_sha1s(root: str, is_zip: bool, files: list[str]) -> list[str]:
    """sha1 hex digest of each file's bytes (directory or zip source)."""
    out = []
    zf = zipfile.ZipFile(root) if is_zip else None
    try:
        for file in files:
            data = zf.read(file) if zf is not None else (Path(root) / file).read_bytes()
            out.append(hashlib.sha1(data).hexdigest())
    finally:
        if zf is not None:
            zf.close()
    return out


def union_fingerprint(fingerprints: list[str], size: int) -> str:
    """sha256 of the sources' fingerprints (in order), the size and the union format."""
    payload = {"format": UNION_FORMAT, "sources": fingerprints, "size": size,
               "preprocessing_version": PREPROCESSING_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _part(cache_dir: Path) -> dict:
    """A source's cache index with its readable rows and their sha1s."""
    index = json.loads((cache_dir / "index.json").read_text())
    rows = np.flatnonzero(np.load(cache_dir / "ok.npy"))
    root = index["root"]
    sha1s = file_sha1s(root, Path(root).is_file(), [index["files"][r] for r in rows])
    return {"index": index, "rows": rows, "sha1": sha1s, "dir": cache_dir}


def select_rows(parts: list[dict]) -> tuple[list[tuple[int, int]], list[dict], list[str]]:
    """Rows kept as (part, row), per-source duplicate counts, and notes on conflicting duplicates."""
    seen: dict[str, tuple[int, str, int]] = {}  # sha1 -> (part, file, label)
    kept, stats, notes = [], [], []
    for p, part in enumerate(parts):
        index = part["index"]
        dropped = conflicting = 0
        for row, sha1 in zip(part["rows"], part["sha1"]):
            label = index["labels"][row]
            if sha1 in seen:
                dropped += 1
                first = seen[sha1]
                if first[2] != label:
                    conflicting += 1
                    if conflicting <= 5:
                        notes.append(f"{index['source']}:{index['files'][row]} is byte-identical to "
                                     f"{parts[first[0]]['index']['source']}:{first[1]} but labelled differently "
                                     "(the first is kept)")
                continue
            seen[sha1] = (p, index["files"][row], label)
            kept.append((p, int(row)))
        stats.append({"duplicates_dropped": dropped, "duplicates_conflicting_labels": conflicting})
    return kept, stats, notes


def _group(index: dict, p: int, row: int) -> str:
    """The person of a row: the source's group as is (shared numbering joins sources), else the file."""
    groups = index["groups"]
    return str(groups[row]) if groups else f"file:{p}:{index['files'][row]}"


def _prefixed(parts: list[dict], key: str) -> list[str]:
    """A list-valued index entry of every source, each item prefixed by its source."""
    return [f"{part['index']['source']}: {item}" for part in parts for item in part["index"][key]]


def union_index(parts: list[dict], kept: list[tuple[int, int]], stats: list[dict], notes: list[str],
                fp: str, size: int) -> dict:
    """index.json of the union cache: the rows kept, their labels, persons, sources and sha1s."""
    sha1_of = [dict(zip(map(int, part["rows"]), part["sha1"])) for part in parts]
    grouped = sorted({part["index"]["grouped_by"] for part in parts if part["index"]["grouped_by"]})
    sources = [{"source": part["index"]["source"], "kind": part["index"]["kind"], "root": part["index"]["root"],
                "fingerprint": part["index"]["fingerprint"], "grouped_by": part["index"]["grouped_by"],
                "readable": int(len(part["rows"])), "kept": sum(1 for q, _ in kept if q == p), **stats[p]}
               for p, part in enumerate(parts)]
    return {
        "format": UNION_FORMAT, "fingerprint": fp, "kind": "union", "size": size,
        "source": " + ".join(s["source"] for s in sources), "root": "",
        "preprocessing_version": PREPROCESSING_VERSION, "n": len(kept),
        "framing": parts[0]["index"].get("framing", "none"),
        "unframed": [f"{part['index']['source']}: {f}" for part in parts for f in part["index"].get("unframed", [])],
        "ids": [f"{p}:{parts[p]['index']['ids'][r]}" for p, r in kept],
        "files": [parts[p]["index"]["files"][r] for p, r in kept],
        "labels": [parts[p]["index"]["labels"][r] for p, r in kept],
        "groups": [_group(parts[p]["index"], p, r) for p, r in kept],
        "grouped_by": "+".join(grouped) or None,
        "source_index": [p for p, _ in kept],
        "sha1": [sha1_of[p][r] for p, r in kept],
        "sources": sources,
        "skipped": _prefixed(parts, "skipped"),
        "excluded": {c: sum(part["index"]["excluded"].get(c, 0) for part in parts) for c in parts[0]["index"]["excluded"]},
        "exclusions": [{**record, "source": part["index"]["source"]}
                       for part in parts for record in part["index"].get("exclusions", [])],
        "missing_images": _prefixed(parts, "missing_images"),
        "unlabelled_images": _prefixed(parts, "unlabelled_images"),
        "notes": _prefixed(parts, "notes") + notes + [
            f"{sum(s['duplicates_dropped'] for s in stats)} byte-identical duplicates dropped (sha1)"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def build_union(parts: list[dict], fp: str, size: int, final_dir: Path) -> None:
    """Write the union cache (images.npy, labels.npy, ok.npy, index.json) atomically into final_dir."""
    kept, stats, notes = select_rows(parts)
    if not kept:
        raise UserError("no readable image in any source")
    tmp = final_dir.parent / f".tmp-{fp[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                           shape=(len(kept), size, size, 3))
        for p, part in enumerate(parts):
            mine = [(i, row) for i, (q, row) in enumerate(kept) if q == p]
            if mine:
                src = np.load(part["dir"] / "images.npy", mmap_mode="r")
                images[[i for i, _ in mine]] = src[[row for _, row in mine]]
        images.flush()
        del images
        index = union_index(parts, kept, stats, notes, fp, size)
        np.save(tmp / "labels.npy", np.asarray(index["labels"], dtype=np.int64))
        np.save(tmp / "ok.npy", np.ones(len(kept), dtype=bool))
        (tmp / "index.json").write_text(json.dumps(index, indent=1))
        os.rename(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def annotate_manifest(manifest_path: Path, cache_dir: Path) -> None:
    """Add `sources` and each split's per-row source index (and sha1) to a union manifest."""
    index = json.loads((cache_dir / "index.json").read_text())
    manifest = json.loads(manifest_path.read_text())
    if "sources" in manifest:
        return
    manifest["sources"] = index["sources"]
    for split in manifest["splits"].values():
        split["source_index"] = [index["source_index"][r] for r in split["indices"]]
        split["sha1"] = [index["sha1"][r] for r in split["indices"]]
    write_json_atomic(manifest_path, manifest, indent=1)


def prepare_union(sources: list[str], *, size: int = IMAGE_SIZE, exclude: bool = True,
                  scheduler: str | None = None, work_dir: Path = WORK_DIR, seed: int = SEED,
                  group_column: str | None = None, progress: bool = True, exclude_files: list = (),
                  framing: str = "none"):
    """Prepare every source, then their deduplicated union split by person (a PreparedData)."""
    from training.prepare import PreparedData, prepare

    if len(set(sources)) != len(sources):
        raise UserError(f"a source is given twice: {', '.join(sources)}")
    t0 = time.perf_counter()
    prepared = [prepare(s, size=size, exclude=exclude, scheduler=scheduler, work_dir=work_dir, seed=seed,
                        group_column=group_column, progress=progress, exclude_files=exclude_files, framing=framing)
                for s in sources]
    fp = union_fingerprint([p.fingerprint for p in prepared], size)
    cache_dir = cache_root(Path(work_dir)).resolve() / f"union-{size}-{fp[:16]}"
    reused = is_cache_of(cache_dir, fp)
    if not reused:
        if cache_dir.exists():
            shutil.rmtree(cache_dir)
        build_union([_part(p.cache_dir) for p in prepared], fp, size, cache_dir)
    manifest_path = cache_dir / f"manifest-seed{seed}.json"
    old = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if old.get("split_version") != SPLIT_VERSION or "sources" not in old:
        manifest_path = write_manifest(cache_dir, seed)
        annotate_manifest(manifest_path, cache_dir)
    manifest = json.loads(manifest_path.read_text())
    return PreparedData(
        manifest_path=manifest_path, cache_dir=cache_dir, fingerprint=fp, counts=manifest["counts"],
        skipped=manifest["skipped"], reused=reused and all(p.reused for p in prepared),
        excluded=manifest["excluded"], exclusions=manifest.get("exclusions", []),
        missing_images=manifest["missing_images"],
        unlabelled_images=manifest["unlabelled_images"], notes=manifest["notes"],
        seconds=time.perf_counter() - t0,
    )

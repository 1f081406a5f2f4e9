"""Cache: a source's fingerprint and its decoded uint8 cache, built with dask, and the cache's life.

    fingerprint of (files + sizes/mtimes or zip CRCs, labels, groups, exclusions, size,
    PREPROCESSING_VERSION)
      -> WORK_DIR/cache/<kind>-<size>-<fp16>/: every image decoded + resized in parallel by dask
         (threads, processes or a dask.distributed cluster) through glasses.preprocessing.framed_or_whole
         into images.npy (uint8 memmap, one row per candidate file); unreadable files skipped and
         reported in index.json
      -> built in a temporary directory and renamed into place only when complete, so an
         interrupted run never leaves a cache a later run would take as complete; temporary
         directories of dead runs on this host are removed (never another host's)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np

from glasses.config import CACHE_SUBDIR, DECODE_CHUNK, EXCLUDED_IDS_FILE, PREPARE_SCHEDULER, WORK_DIR
from glasses.files import file_sha256
from glasses.preprocessing import PREPROCESSING_VERSION, ImageDecodeError, framed_or_whole
from training.cli import UserError
from training.sources import Inventory, Scan

CACHE_FORMAT = 1
NO_FACE = "no face found: kept unframed"
SCHEDULER_TIMEOUT = "10s"  # connecting to a dask.distributed scheduler
LOCAL_SCHEDULERS = ("threads", "processes", "synchronous", "sync", "single-threaded")


def fingerprint(listing: Scan, size: int, *, exclude: bool = True, group_column: str | None = None,
                exclusions: list[str] | None = None, framing: str = "none") -> str:
    """sha256 of what determines the cache, computable without decoding or parsing anything.

    Image files (names, folder labels, sizes + mtimes, or sizes + CRCs in a zip), the label files' sizes +
    mtimes/CRCs (they hold labels, groups), the exclusion files' sha256s (`exclusions`; None = the
    Kaggle default: the paper's list unless exclude=False), the group column asked for, image size
    and PREPROCESSING_VERSION.
    """
    if exclusions is None:
        exclusions = [file_sha256(EXCLUDED_IDS_FILE)] if listing.kind == "kaggle-dir" and exclude else []
    exclusions = list(exclusions) or None
    payload = {
        "format": CACHE_FORMAT,
        "kind": listing.kind,
        "size": size,
        "preprocessing_version": PREPROCESSING_VERSION,
        **({"framing": framing} if framing != "none" else {}),  # unframed caches keep their fingerprints
        "exclusions": exclusions,
        "group_column": group_column,
        "label_files": listing.label_files,
        "images": [list(t) for t in listing.images],
        "unknown_files": listing.unknown_files,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _read_bytes(root: str, is_zip: bool, file: str, zf: zipfile.ZipFile | None) -> bytes:
    return zf.read(file) if is_zip else (Path(root) / file).read_bytes()


def decode_chunk(root: str, is_zip: bool, files: list[str], start: int, images_path: str, size: int,
                 framing: str = "none") -> list:
    """One dask task: decode + resize (+ frame) `files` into rows start.. of the images.npy memmap.

    Returns [(row, file, reason)] for files that could not be read (their rows stay zero), and
    (row, file, NO_FACE) for photos framing "face" kept unframed because no face was found.
    """
    out = np.load(images_path, mmap_mode="r+")
    errors = []
    zf = zipfile.ZipFile(root) if is_zip else None
    try:
        for i, file in enumerate(files):
            try:
                out[start + i], missing = framed_or_whole(_read_bytes(root, is_zip, file, zf), size, framing)
                if missing:
                    errors.append((start + i, file, NO_FACE))
            except ImageDecodeError as exc:
                errors.append((start + i, file, str(exc)))
            except (OSError, KeyError, zipfile.BadZipFile) as exc:
                errors.append((start + i, file, f"cannot read file: {exc}"))
            except Exception as exc:  # e.g. malformed EXIF: one bad file must not stop the job
                errors.append((start + i, file, f"cannot decode: {type(exc).__name__}: {exc}"))
        out.flush()
    finally:
        if zf is not None:
            zf.close()
        del out
    return errors


def chunk_size(n: int, max_chunk: int = DECODE_CHUNK) -> int:
    """Images per task: at most max_chunk, small sources still split into ~8+ tasks."""
    return max(1, min(max_chunk, math.ceil(n / 8)))


def decode_all(inv: Inventory, images_path: Path, size: int, scheduler: str | None = None,
               *, progress: bool = True, framing: str = "none") -> list[tuple[int, str, str]]:
    """Decode + resize (+ frame) every file of `inv` into images_path with dask; returns the failures
    (and the photos kept unframed, reason NO_FACE)."""
    import dask

    step = chunk_size(len(inv.files))
    run = uuid.uuid4().hex[:16]  # unique keys: concurrent prepares may share one distributed cluster
    tasks = [
        dask.delayed(decode_chunk, pure=False)(str(inv.root), inv.is_zip, inv.files[s:s + step], s,
                                               str(images_path), size, framing, dask_key_name=f"decode-{run}-{s}")
        for s in range(0, len(inv.files), step)
    ]
    scheduler = scheduler or PREPARE_SCHEDULER
    if scheduler.startswith("tcp://") or scheduler.startswith("tls://"):
        results = _compute_distributed(tasks, scheduler, progress=progress)
    elif scheduler in LOCAL_SCHEDULERS:
        if progress:
            from dask.diagnostics import ProgressBar

            with ProgressBar(minimum=1.0, dt=0.5):
                results = dask.compute(*tasks, scheduler=scheduler)
        else:
            results = dask.compute(*tasks, scheduler=scheduler)
    else:
        raise UserError(f"unknown scheduler {scheduler!r}: use threads, processes or tcp://HOST:PORT")
    return [e for chunk in results for e in chunk]


def _compute_distributed(tasks: list, address: str, *, progress: bool) -> list:
    """Run the same graph on an existing dask.distributed cluster (workers must see the same files)."""
    from distributed import Client

    try:
        client = Client(address, timeout=SCHEDULER_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise UserError(f"cannot reach the dask scheduler at {address}: {exc}") from None
    try:
        futures = client.compute(tasks)
        if progress:
            from distributed.diagnostics.progressbar import progress as show_progress

            show_progress(futures, notebook=False, scheduler=client.scheduler.address)
        return client.gather(futures)
    finally:
        client.close()


def cache_root(work_dir: Path = WORK_DIR) -> Path:
    return Path(work_dir) / CACHE_SUBDIR


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(root: Path) -> list[Path]:
    """Remove temporary cache dirs left by prepare runs on this host that died (their pid is gone).

    A work directory may be shared between hosts (distributed tuning, dask over tcp://): a temp dir
    whose `owner` file names another host is never touched, as its pid means nothing here.
    """
    removed = []
    for d in root.glob(".tmp-*"):
        parts = d.name.split("-")
        owner = d / "owner"
        host = owner.read_text().strip() if owner.is_file() else socket.gethostname()
        if host == socket.gethostname() and len(parts) >= 4 and parts[2].isdigit() and not _pid_alive(int(parts[2])):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def is_cache_of(cache_dir: Path, fp: str) -> bool:
    """A complete cache (index.json written last, then renamed into place) built for fingerprint `fp`."""
    index = cache_dir / "index.json"
    return index.exists() and json.loads(index.read_text()).get("fingerprint") == fp


def build_cache(inv: Inventory, fp: str, size: int, final_dir: Path, scheduler: str | None,
                *, progress: bool = True, framing: str = "none") -> None:
    """Decode everything into a temp dir next to final_dir, then rename it into place atomically."""
    root = final_dir.parent
    root.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(root)
    tmp = root / f".tmp-{fp[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    (tmp / "owner").write_text(socket.gethostname())
    try:
        images_path = tmp / "images.npy"
        arr = np.lib.format.open_memmap(images_path, mode="w+", dtype=np.uint8, shape=(len(inv.files), size, size, 3))
        del arr  # header + zero-filled (sparse) file; tasks open it r+ themselves
        np.save(tmp / "labels.npy", np.asarray(inv.labels, dtype=np.int64))
        errors = decode_all(inv, images_path, size, scheduler, progress=progress, framing=framing)
        unframed = [file for _, file, reason in sorted(errors) if reason == NO_FACE]
        errors = [e for e in errors if e[2] != NO_FACE]
        ok = np.ones(len(inv.files), dtype=bool)
        for row, _, _ in errors:
            ok[row] = False
        np.save(tmp / "ok.npy", ok)
        index = {
            "format": CACHE_FORMAT,
            "fingerprint": fp,
            "source": inv.source,
            "kind": inv.kind,
            "root": str(inv.root),
            "size": size,
            "preprocessing_version": PREPROCESSING_VERSION,
            "framing": framing,
            "unframed": unframed,  # framing "face": photos with no face found, kept as they are
            "n": len(inv.files),
            "ids": inv.ids,
            "files": inv.files,
            "labels": inv.labels,
            "groups": inv.groups,
            "grouped_by": inv.grouped_by,
            "skipped": [f"{file}: {reason}" for _, file, reason in sorted(errors)],
            "excluded": inv.excluded,
            "exclusions": inv.exclusions,
            "missing_images": inv.missing_images,
            "unlabelled_images": inv.unlabelled_images,
            "notes": inv.notes,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / "index.json").write_text(json.dumps(index, indent=1))
        try:
            os.rename(tmp, final_dir)  # atomic: the cache appears complete or not at all
        except OSError:
            if not (final_dir / "index.json").exists():  # not a concurrent run's finished cache
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

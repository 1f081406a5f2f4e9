"""Prepare: a source of labelled images -> a decoded uint8 cache + a seeded split manifest.

    source ("kaggle" | "kaggle-dir:PATH" | "folders:PATH")
      -> inventory: labels read with dask.dataframe (explicit blocksize/usecols/dtype), image files
         listed, Kaggle exclusions applied, CSV ids without image / images without label reported
      -> fingerprint of (files + sizes/mtimes or zip CRCs, labels, groups, exclusions, size,
         PREPROCESSING_VERSION)
      -> cache WORK_DIR/cache/<kind>-<size>-<fp16>/: every image decoded + resized in parallel by dask
         (threads, processes or a dask.distributed cluster) through glasses.preprocessing.to_uint8 into
         images.npy (uint8 memmap, one row per candidate file); unreadable files skipped and reported.
         Built in a temporary directory and renamed into place only when complete, so an interrupted
         run never leaves a cache a later run would take as complete.
      -> split manifest manifest-seed<SEED>.json in the cache dir: seeded 0.8/0.1/0.1, stratified by
         label, grouped (no person in two splits) when groups are known.

A re-run with the same inputs reuses the cache (and the manifest, if the seed matches).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import re
import shutil
import socket
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from glasses.config import (
    ALLOWED_SIZES,
    CACHE_SUBDIR,
    CLASS_NAMES,
    CSV_BLOCKSIZE,
    DECODE_CHUNK,
    EXCLUDED_IDS_FILE,
    FOLDER_ALIASES,
    GROUP_COLUMNS,
    IMAGE_SIZE,
    KAGGLE_IMAGE_DIR,
    LABELS_CSV,
    LABELS_FILE_COLUMN,
    PREPARE_SCHEDULER,
    SEED,
    SPLIT_FRACTIONS,
    WORK_DIR,
)
from glasses.preprocessing import PREPROCESSING_VERSION, ImageDecodeError, to_uint8
from training.cli import UserError

SPLITS = ("train", "val", "test")
CACHE_FORMAT = 1
SPLIT_VERSION = "greedy-running-target-v1"  # bump when split_assignments changes (manifests are rewritten)
SCHEDULER_TIMEOUT = "10s"  # connecting to a dask.distributed scheduler
LOCAL_SCHEDULERS = ("threads", "processes", "synchronous", "sync", "single-threaded")
_FACE_RE = re.compile(r"^face-(\d+)\.png$", re.IGNORECASE)


@dataclass
class PreparedData:
    """What `prepare` produced (the manifest holds everything else)."""

    manifest_path: Path  # JSON split manifest
    cache_dir: Path  # images.npy (uint8 memmap, N x S x S x 3), labels.npy, index.json
    fingerprint: str
    counts: dict  # {"train": {"glasses": n, "no_glasses": n}, "val": {...}, "test": {...}}
    skipped: list[str]  # "file: reason" for files skipped as unreadable
    reused: bool  # cache reused from an earlier run
    excluded: dict = field(default_factory=dict)  # Kaggle exclusions removed, per class
    missing_images: list[str] = field(default_factory=list)  # labelled ids/files with no image
    unlabelled_images: list[str] = field(default_factory=list)  # images with no label
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Scan:
    """A source listed without reading any label file or image (cheap: enough for the fingerprint)."""

    kind: str  # "kaggle-dir" | "folders"
    root: Path  # directory or .zip
    source: str  # the source string with its path made absolute
    images: list[tuple[str, int | None, list]]  # (file relative to root / zip member, folder label or None, stats)
    label_files: dict[str, list]  # label CSVs present -> stats (their contents are read only when building)
    unknown_files: list[str] = field(default_factory=list)  # files that match no expected name

    @property
    def is_zip(self) -> bool:
        return self.root.is_file()


@dataclass
class Inventory:
    """Everything known about a source before any image is decoded."""

    kind: str
    root: Path
    source: str
    ids: list[str]
    files: list[str]  # relative to root (or zip member names)
    labels: list[int]
    groups: list[str] | None
    grouped_by: str | None
    excluded: dict[str, int] = field(default_factory=lambda: {c: 0 for c in CLASS_NAMES})
    missing_images: list[str] = field(default_factory=list)
    unlabelled_images: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def is_zip(self) -> bool:
        return self.root.is_file()


# --- sources ------------------------------------------------------------------------------------
def parse_source(source: str) -> tuple[str, str]:
    """Split "kind:PATH" into (kind, path); "kaggle" has no path."""
    if source == "kaggle":
        return "kaggle", ""
    kind, sep, path = source.partition(":")
    if not sep or kind not in ("kaggle-dir", "folders") or not path:
        raise UserError(f"unknown source {source!r}: use kaggle, kaggle-dir:PATH or folders:PATH")
    return kind, path


def check_source(source: str) -> None:
    """Fail in one line now (before any heavy import) when SRC is malformed or its path is missing."""
    kind, path = parse_source(source)
    if kind != "kaggle":
        _existing(path, "folder" if kind == "folders" else "Kaggle download")


def _existing(path: str, what: str) -> Path:
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise UserError(f"{what} not found: {p}")
    return p


def _read_csv(url: str, usecols: list[str], dtype: dict, label: str):
    """dask.dataframe.read_csv with an explicit blocksize/usecols/dtype -> small pandas frame."""
    import dask.dataframe as dd

    try:
        return dd.read_csv(url, blocksize=CSV_BLOCKSIZE, usecols=usecols, dtype=dtype).compute()
    except (ValueError, TypeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{label}: cannot read columns {usecols} as {dtype}: {msg}") from None


def _csv_header(root: Path, name: str) -> list[str]:
    """The header row of a CSV in a directory or zip (first line only)."""
    if root.is_file():
        with zipfile.ZipFile(root) as zf, zf.open(name) as fh:
            line = io.TextIOWrapper(fh, encoding="utf-8").readline()
    else:
        with open(root / name, encoding="utf-8") as fh:
            line = fh.readline()
    return [c.strip() for c in line.strip().split(",")] if line.strip() else []


def _csv_url(root: Path, name: str) -> str:
    return f"zip://{name}::{root}" if root.is_file() else str(root / name)


def _kaggle_root(path: Path) -> Path:
    """A Kaggle-layout directory, or the downloaded .zip (also found inside a download directory)."""
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise UserError(f"{path} is neither a directory nor a zip file")
        return path
    if (path / "train.csv").exists():
        return path
    zips = sorted(path.glob("*.zip"))
    if len(zips) == 1:
        return _kaggle_root(zips[0])
    raise UserError(f"{path} has no train.csv (expected Kaggle's layout or its downloaded .zip)")


def _natural_key(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def scan_kaggle(path: str) -> Scan:
    """List a Kaggle-layout source (dir or zip): face-<id>.png images and the CSVs' sizes/mtimes or CRCs."""
    root = _kaggle_root(_existing(path, "Kaggle directory or zip"))
    prefix = KAGGLE_IMAGE_DIR.strip("/") + "/"
    scan = Scan(kind="kaggle-dir", root=root, source=f"kaggle-dir:{root}", images=[], label_files={})
    if root.is_file():
        try:
            with zipfile.ZipFile(root) as zf:
                infos = zf.infolist()
        except zipfile.BadZipFile as exc:
            raise UserError(f"{root} is not a readable zip: {exc}") from None
        for info in infos:
            name = info.filename
            if name in ("train.csv", "test.csv"):
                scan.label_files[name] = [info.file_size, info.CRC]
            elif info.is_dir() or not name.startswith(prefix):
                continue
            elif _FACE_RE.match(name[len(prefix):]) and "/" not in name[len(prefix):]:
                scan.images.append((name, None, [info.file_size, info.CRC]))
            else:
                scan.unknown_files.append(name)
    else:
        for name in ("train.csv", "test.csv"):
            if (root / name).is_file():
                st = (root / name).stat()
                scan.label_files[name] = [st.st_size, st.st_mtime_ns]
        image_dir = root / KAGGLE_IMAGE_DIR
        if not image_dir.is_dir():
            raise UserError(f"{root} has no {KAGGLE_IMAGE_DIR}/ folder (expected Kaggle's layout)")
        with os.scandir(image_dir) as it:
            for entry in it:
                if not entry.is_file() or entry.name.startswith("."):
                    continue
                if _FACE_RE.match(entry.name):
                    st = entry.stat()
                    scan.images.append((prefix + entry.name, None, [st.st_size, st.st_mtime_ns]))
                else:
                    scan.unknown_files.append(prefix + entry.name)
    if "train.csv" not in scan.label_files:
        raise UserError(f"{root} has no train.csv at its top level (expected Kaggle's layout)")
    if not scan.images:
        raise UserError(f"{root} has no {KAGGLE_IMAGE_DIR}/face-<id>.png images")
    scan.images.sort(key=lambda t: _natural_key(t[0]))
    return scan


def label_kaggle(scan: Scan, *, exclude: bool = True) -> Inventory:
    """Read train.csv (and test.csv) with dask, apply the exclusions, match ids to images."""
    root = scan.root
    prefix = KAGGLE_IMAGE_DIR.strip("/") + "/"
    images = {str(int(_FACE_RE.match(f[len(prefix):]).group(1))): f for f, _, _ in scan.images}
    header = _csv_header(root, "train.csv")
    if "id" not in header or "glasses" not in header:
        raise UserError(f"{root}: train.csv must have columns id and glasses (found {header[:5]}...)")
    notes = []
    n_features = sum(1 for c in header if re.fullmatch(r"v\d+", c))
    if n_features != 512:
        notes.append(f"train.csv has {n_features} feature columns v1..vN (Kaggle's has 512; they are not used)")
    train = _read_csv(_csv_url(root, "train.csv"), ["id", "glasses"], {"id": "int64", "glasses": "int64"}, "train.csv")
    if train.empty:
        raise UserError(f"{root}: train.csv has no rows")
    bad = train[~train["glasses"].isin([0, 1])]
    if len(bad):
        raise UserError(f"train.csv: glasses must be 0 or 1; {len(bad)} rows are not (first id {bad['id'].iloc[0]})")
    dup = train["id"][train["id"].duplicated()]
    if len(dup):
        raise UserError(f"train.csv: {len(dup)} duplicate ids (first {dup.iloc[0]})")
    test_ids: set[str] = set()
    if "test.csv" in scan.label_files:
        if "id" not in _csv_header(root, "test.csv"):
            raise UserError(f"{root}: test.csv has no id column")
        test = _read_csv(_csv_url(root, "test.csv"), ["id"], {"id": "int64"}, "test.csv")
        test_ids = {str(i) for i in test["id"].tolist()}
        notes.append(f"test.csv: {len(test_ids)} unlabelled ids ignored for training")

    excluded_set = load_excluded_ids() if exclude else set()
    inv = Inventory(kind=scan.kind, root=root, source=scan.source, ids=[], files=[], labels=[],
                    groups=None, grouped_by=None, notes=notes)
    labelled = set()
    for raw_id, label in zip(train["id"].tolist(), train["glasses"].tolist()):
        sid = str(int(raw_id))
        labelled.add(sid)
        if sid in excluded_set:
            inv.excluded[CLASS_NAMES[label]] += 1
            continue
        if sid not in images:
            inv.missing_images.append(f"id {sid}: no {prefix}face-{sid}.png")
            continue
        inv.ids.append(sid)
        inv.files.append(images[sid])
        inv.labels.append(int(label))
    inv.unlabelled_images = [images[i] for i in sorted(images, key=int) if i not in labelled and i not in test_ids]
    inv.unlabelled_images += sorted(scan.unknown_files)
    if not inv.ids:
        raise UserError(f"{root}: no labelled image left to prepare")
    return inv


def load_excluded_ids(path: Path = EXCLUDED_IDS_FILE) -> set[str]:
    """The paper's removed Kaggle ids (one integer per line), as strings."""
    return {str(int(line)) for line in path.read_text().split() if line.strip()}


def scan_folders(path: str) -> Scan:
    """List a folders source: PATH/glasses/*, PATH/no_glasses/* (or no-glasses/), optional labels.csv."""
    root = _existing(path, "folder")
    if not root.is_dir():
        raise UserError(f"{root} is not a directory (folders: needs PATH/glasses/ and PATH/no_glasses/)")
    class_dirs = [(d, FOLDER_ALIASES[d.name.lower()]) for d in sorted(root.iterdir())
                  if d.is_dir() and d.name.lower() in FOLDER_ALIASES]
    found = {cls for _, cls in class_dirs}
    if found != set(CLASS_NAMES):
        missing = " or ".join(f"{c}/" for c in sorted(CLASS_NAMES) if c not in found)
        raise UserError(f"{root} has no {missing} folder (folders: needs glasses/ and no_glasses/)")
    scan = Scan(kind="folders", root=root, source=f"folders:{root}", images=[], label_files={})
    for d, cls in class_dirs:
        for dirpath, dirnames, filenames in os.walk(d):
            dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
            for name in filenames:
                if name.startswith("."):
                    continue
                p = Path(dirpath) / name
                st = p.stat()
                scan.images.append((p.relative_to(root).as_posix(), CLASS_NAMES.index(cls), [st.st_size, st.st_mtime_ns]))
    scan.images.sort(key=lambda t: _natural_key(t[0]))
    empty = [c for i, c in enumerate(CLASS_NAMES) if not any(lab == i for _, lab, _ in scan.images)]
    if empty:
        raise UserError(f"{root}: no files in {' and '.join(c + '/' for c in empty)} (need images of both classes)")
    if (root / LABELS_CSV).is_file():
        st = (root / LABELS_CSV).stat()
        scan.label_files[LABELS_CSV] = [st.st_size, st.st_mtime_ns]
    return scan


def label_folders(scan: Scan, *, group_column: str | None = None) -> Inventory:
    """Labels from the folder names; groups (persons) from labels.csv read with dask, when present."""
    root = scan.root
    inv = Inventory(kind=scan.kind, root=root, source=scan.source, ids=[], files=[], labels=[],
                    groups=None, grouped_by=None)
    group_of: dict[str, str] = {}
    labels_csv = root / LABELS_CSV
    if LABELS_CSV in scan.label_files:
        header = _csv_header(root, LABELS_CSV)
        if LABELS_FILE_COLUMN not in header:
            raise UserError(f"{labels_csv} has no {LABELS_FILE_COLUMN!r} column")
        if group_column is not None and group_column not in header:
            raise UserError(f"{labels_csv} has no group column {group_column!r} (columns: {', '.join(header)})")
        column = group_column or next((c for c in GROUP_COLUMNS if c in header), None)
        if column:
            table = _read_csv(str(labels_csv), [LABELS_FILE_COLUMN, column],
                              {LABELS_FILE_COLUMN: "string", column: "string"}, LABELS_CSV)
            table = table.dropna()
            group_of = {PurePosixPath(str(f).strip()).as_posix(): str(g).strip()  # "./glasses/x.jpg" -> "glasses/x.jpg"
                        for f, g in zip(table[LABELS_FILE_COLUMN], table[column]) if str(g).strip()}
            inv.grouped_by = column
            present = {f for f, _, _ in scan.images}
            inv.missing_images = [f"{f}: listed in {LABELS_CSV}, no such file"
                                  for f in sorted(group_of, key=_natural_key) if f not in present]
        else:
            inv.notes.append(f"{LABELS_CSV} has no group column ({', '.join(GROUP_COLUMNS)}): split not grouped")
    elif group_column is not None:
        raise UserError(f"--group-column {group_column} given but {labels_csv} does not exist")
    no_group = 0
    groups = []
    for rel, label, _ in scan.images:
        inv.ids.append(rel)
        inv.files.append(rel)
        inv.labels.append(label)
        g = group_of.get(rel)
        if g is None:
            no_group += 1
            g = f"file:{rel}"  # unknown person: a group of its own
        groups.append(g)
    if inv.grouped_by:
        inv.groups = groups
        if no_group:
            inv.notes.append(f"{no_group} images not in {LABELS_CSV}: each treated as its own group")
    return inv


def scan(source: str, *, work_dir: Path = WORK_DIR) -> Scan:
    """List any source; "kaggle" downloads first (training.download)."""
    kind, path = parse_source(source)
    if kind == "kaggle":
        from training.download import download

        result = scan_kaggle(str(download(Path(work_dir) / "kaggle")))
        result.source = "kaggle"
        return result
    return scan_kaggle(path) if kind == "kaggle-dir" else scan_folders(path)


def inventory(listing: Scan, *, exclude: bool = True, group_column: str | None = None) -> Inventory:
    """Read the labels of a scanned source (dask) -> what will be decoded, with labels and groups."""
    if listing.kind == "kaggle-dir":
        return label_kaggle(listing, exclude=exclude)
    return label_folders(listing, group_column=group_column)


# --- fingerprint and cache ----------------------------------------------------------------------
def fingerprint(listing: Scan, size: int, *, exclude: bool = True, group_column: str | None = None) -> str:
    """sha256 of what determines the cache, computable without decoding or parsing anything.

    Image files (names, folder labels, sizes + mtimes, or sizes + CRCs in a zip), the label files' sizes +
    mtimes/CRCs (they hold labels, groups), the exclusion list (Kaggle, unless --no-exclude), the
    group column asked for, image size and PREPROCESSING_VERSION.
    """
    exclusions = None
    if listing.kind == "kaggle-dir" and exclude:
        exclusions = hashlib.sha256(EXCLUDED_IDS_FILE.read_bytes()).hexdigest()
    payload = {
        "format": CACHE_FORMAT,
        "kind": listing.kind,
        "size": size,
        "preprocessing_version": PREPROCESSING_VERSION,
        "exclusions": exclusions,
        "group_column": group_column,
        "label_files": listing.label_files,
        "images": [list(t) for t in listing.images],
        "unknown_files": listing.unknown_files,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _read_bytes(root: str, is_zip: bool, file: str, zf: zipfile.ZipFile | None) -> bytes:
    return zf.read(file) if is_zip else (Path(root) / file).read_bytes()


def decode_chunk(root: str, is_zip: bool, files: list[str], start: int, images_path: str, size: int) -> list:
    """One dask task: decode + resize `files` into rows start.. of the images.npy memmap.

    Returns [(row, file, reason)] for files that could not be read (their rows stay zero).
    """
    out = np.load(images_path, mmap_mode="r+")
    errors = []
    zf = zipfile.ZipFile(root) if is_zip else None
    try:
        for i, file in enumerate(files):
            try:
                out[start + i] = to_uint8(_read_bytes(root, is_zip, file, zf), size)
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
               *, progress: bool = True) -> list[tuple[int, str, str]]:
    """Decode + resize every file of `inv` into images_path with dask; returns the failures."""
    import dask

    step = chunk_size(len(inv.files))
    run = uuid.uuid4().hex[:16]  # unique keys: concurrent prepares may share one distributed cluster
    tasks = [
        dask.delayed(decode_chunk, pure=False)(str(inv.root), inv.is_zip, inv.files[s:s + step], s,
                                               str(images_path), size, dask_key_name=f"decode-{run}-{s}")
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
                *, progress: bool = True) -> None:
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
        errors = decode_all(inv, images_path, size, scheduler, progress=progress)
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
            "n": len(inv.files),
            "ids": inv.ids,
            "files": inv.files,
            "labels": inv.labels,
            "groups": inv.groups,
            "grouped_by": inv.grouped_by,
            "skipped": [f"{file}: {reason}" for _, file, reason in sorted(errors)],
            "excluded": inv.excluded,
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


# --- split --------------------------------------------------------------------------------------
def split_assignments(labels: list[int] | np.ndarray, groups: list[str] | None = None, *, seed: int = SEED,
                      fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) per item: seeded, stratified by label, grouped if groups given.

    Ungrouped: each class is permuted with the seed and cut at the fractions (exact per class).
    Grouped: groups (persons) are assigned whole, heaviest first (seeded order among equals), each to the
    split that keeps the per-class counts closest to the fractions of everything assigned so far.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    frac = np.asarray(fractions, dtype=float)
    out = np.zeros(len(labels), dtype=np.int64)
    if groups is None:
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            n_val, n_test = round(len(idx) * frac[1]), round(len(idx) * frac[2])
            out[idx[len(idx) - n_val - n_test:len(idx) - n_test]] = 1
            out[idx[len(idx) - n_test:]] = 2
        return out
    names, inverse = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    n_classes = max(len(CLASS_NAMES), int(labels.max()) + 1)
    per_group = np.zeros((len(names), n_classes))
    np.add.at(per_group, (inverse, labels), 1)
    totals = np.maximum(per_group.sum(axis=0), 1)
    shuffled = rng.permutation(len(names))
    # heaviest groups first, weighing each class by 1/its total (minority-class members count more);
    # seeded order among equals
    weight = (per_group / totals).sum(axis=1)
    order = sorted(shuffled, key=lambda g: -weight[g])
    assigned = np.zeros((3, n_classes))
    seen = np.zeros(n_classes)
    where = np.zeros(len(names), dtype=np.int64)
    for g in order:
        seen += per_group[g]
        target = frac[:, None] * seen[None, :]  # running target: fractions of what was assigned so far
        costs = []
        for s in range(3):
            trial = assigned.copy()
            trial[s] += per_group[g]
            costs.append(float((((trial - target) / totals) ** 2).sum()))
        best = int(np.argmin(costs))
        assigned[best] += per_group[g]
        where[g] = best
    return where[inverse]


def write_manifest(cache_dir: Path, seed: int) -> Path:
    """Compute the seeded split over the readable rows of a cache and write manifest-seed<seed>.json."""
    index = json.loads((cache_dir / "index.json").read_text())
    ok = np.load(cache_dir / "ok.npy")
    rows = np.flatnonzero(ok)
    labels = np.asarray(index["labels"], dtype=np.int64)
    groups = index["groups"]
    if len(rows) == 0:
        raise UserError(f"no readable image in {index['source']} ({len(index['skipped'])} files skipped)")
    assign = split_assignments(labels[rows], [groups[r] for r in rows] if groups else None, seed=seed)
    splits, counts = {}, {}
    for s, name in enumerate(SPLITS):
        sel = rows[assign == s]
        splits[name] = {
            "indices": sel.tolist(),
            "ids": [index["ids"][r] for r in sel],
            "files": [index["files"][r] for r in sel],
            "labels": labels[sel].tolist(),
            "groups": [groups[r] for r in sel] if groups else None,
        }
        counts[name] = {c: int((labels[sel] == i).sum()) for i, c in enumerate(CLASS_NAMES)}
    empty = [name for name in SPLITS if not splits[name]["indices"]]
    if empty:
        raise UserError(f"{index['source']} is too small for a {'/'.join(map(str, SPLIT_FRACTIONS))} split: "
                        f"{' and '.join(empty)} would be empty ({len(rows)} readable images)")
    notes = list(index["notes"]) + [
        f"the {name} split has no {c} image: its metrics (AUC, balanced accuracy) will be undefined or one-sided"
        for name in ("val", "test") for c in CLASS_NAMES if counts[name][c] == 0]
    manifest = {
        "format": CACHE_FORMAT,
        "fingerprint": index["fingerprint"],
        "source": index["source"],
        "kind": index["kind"],
        "root": index["root"],
        "size": index["size"],
        "preprocessing_version": index["preprocessing_version"],
        "seed": seed,
        "split_version": SPLIT_VERSION,
        "split_fractions": list(SPLIT_FRACTIONS),
        "class_names": list(CLASS_NAMES),
        "grouped_by": index["grouped_by"],
        "cache": {
            "dir": str(cache_dir),
            "images": str(cache_dir / "images.npy"),
            "labels": str(cache_dir / "labels.npy"),
            "rows": index["n"],
        },
        "counts": counts,
        "excluded": index["excluded"],
        "skipped": index["skipped"],
        "missing_images": index["missing_images"],
        "unlabelled_images": index["unlabelled_images"],
        "notes": notes,
        "splits": splits,
    }
    path = cache_dir / f"manifest-seed{seed}.json"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path)
    return path


# --- the stage ----------------------------------------------------------------------------------
def prepare(source: str, *, size: int = IMAGE_SIZE, exclude: bool = True, scheduler: str | None = None,
            work_dir: Path = WORK_DIR, seed: int = SEED, group_column: str | None = None,
            progress: bool = True) -> PreparedData:
    """Inventory `source`, build (or reuse) its uint8 cache, write the seeded split manifest."""
    if size not in ALLOWED_SIZES:
        raise UserError(f"--size must be one of {', '.join(map(str, ALLOWED_SIZES))}, got {size}")
    t0 = time.perf_counter()
    listing = scan(source, work_dir=Path(work_dir))
    fp = fingerprint(listing, size, exclude=exclude, group_column=group_column)
    cache_dir = cache_root(Path(work_dir)).resolve() / f"{listing.kind}-{size}-{fp[:16]}"
    reused = is_cache_of(cache_dir, fp)
    if not reused:
        inv = inventory(listing, exclude=exclude, group_column=group_column)
        if cache_dir.exists() and not is_cache_of(cache_dir, fp):  # not one a concurrent run just finished
            shutil.rmtree(cache_dir)  # same prefix, different fingerprint, or a foreign dir: replace it
        build_cache(inv, fp, size, cache_dir, scheduler, progress=progress)
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
        lines.append("excluded (paper's list): " + ", ".join(f"{c} {p.excluded[c]}" for c in CLASS_NAMES)
                     + f" (total {sum(p.excluded.values())})")

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


def _run(args: argparse.Namespace) -> int:
    result = prepare(args.source, size=args.size, exclude=not args.no_exclude, scheduler=args.scheduler,
                     work_dir=Path(args.work_dir), seed=args.seed, group_column=args.group_column)
    print(summary(result))
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register `glasses-train prepare`."""
    p = subparsers.add_parser("prepare", help="decode, cache and split a dataset (kaggle, kaggle-dir:PATH, folders:PATH)")
    p.add_argument("--source", required=True, help="kaggle | kaggle-dir:PATH (dir or .zip) | folders:PATH")
    p.add_argument("--size", type=int, choices=ALLOWED_SIZES, default=IMAGE_SIZE, help="image side (default %(default)s)")
    p.add_argument("--no-exclude", action="store_true", help="keep the paper's 523 excluded Kaggle ids")
    p.add_argument("--scheduler", default=None,
                   help=f"threads | processes | tcp://HOST:PORT of a dask.distributed scheduler (default {PREPARE_SCHEDULER})")
    p.add_argument("--work-dir", default=str(WORK_DIR), help="where caches go (default %(default)s)")
    p.add_argument("--seed", type=int, default=SEED, help="split seed (default %(default)s)")
    p.add_argument("--group-column", default=None,
                   help=f"labels.csv column naming the person (default: first of {', '.join(GROUP_COLUMNS)})")
    p.set_defaults(func=_run)

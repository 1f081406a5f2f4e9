"""Sources: list a source of labelled images and read its labels (no image is decoded here).

    "kaggle" | "kaggle-dir:PATH" (directory or .zip) | "folders:PATH"
      -> scan: the image files with sizes + mtimes (or zip CRCs) and the label files present,
         cheap enough to fingerprint before anything is read
      -> inventory: labels read with dask.dataframe (explicit blocksize/usecols/dtype), Kaggle
         exclusions applied, persons (groups) from labels.csv, ids without image and images without
         label reported
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from glasses.config import (
    CLASS_NAMES,
    CSV_BLOCKSIZE,
    EXCLUDED_IDS_FILE,
    FOLDER_ALIASES,
    GROUP_COLUMNS,
    KAGGLE_IMAGE_DIR,
    LABELS_CSV,
    LABELS_FILE_COLUMN,
    WORK_DIR,
)
from training.cli import UserError

_FACE_RE = re.compile(r"^face-(\d+)\.png$", re.IGNORECASE)


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
    removed: list[tuple[str, int]] = field(default_factory=list)  # (id, label) left out by an exclusion file
    exclusions: list[dict] = field(default_factory=list)  # per exclusion file: path, sha256, removed per class

    @property
    def is_zip(self) -> bool:
        return self.root.is_file()


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


def label_kaggle(scan: Scan, *, exclude: bool = True, excluded: set[str] | None = None) -> Inventory:
    """Read train.csv (and test.csv) with dask, leave out the excluded ids (default: the paper's list
    unless exclude=False), match ids to images."""
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

    excluded_set = excluded if excluded is not None else (load_excluded_ids() if exclude else set())
    inv = Inventory(kind=scan.kind, root=root, source=scan.source, ids=[], files=[], labels=[],
                    groups=None, grouped_by=None, notes=notes)
    labelled = set()
    for raw_id, label in zip(train["id"].tolist(), train["glasses"].tolist()):
        sid = str(int(raw_id))
        labelled.add(sid)
        if sid in excluded_set:
            inv.excluded[CLASS_NAMES[label]] += 1
            inv.removed.append((sid, int(label)))
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


def label_folders(scan: Scan, *, group_column: str | None = None, excluded: set[str] | None = None) -> Inventory:
    """Labels from the folder names; groups (persons) from labels.csv read with dask, when present;
    files listed in `excluded` (paths relative to the root) left out."""
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
        if excluded and rel in excluded:
            inv.excluded[CLASS_NAMES[label]] += 1
            inv.removed.append((rel, label))
            continue
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


def inventory(listing: Scan, *, exclude: bool = True, group_column: str | None = None,
              excluded: set[str] | None = None) -> Inventory:
    """Read the labels of a scanned source (dask) -> what will be decoded, with labels and groups.
    `excluded`: ids to leave out (training.exclusions); None = the Kaggle default (`exclude`)."""
    if listing.kind == "kaggle-dir":
        return label_kaggle(listing, exclude=exclude, excluded=excluded)
    return label_folders(listing, group_column=group_column, excluded=excluded)

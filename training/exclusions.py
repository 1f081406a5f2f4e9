"""Exclusion files: photos `prepare --exclude FILE` leaves out, with what each file removed.

A file lists one photo id per line: a Kaggle id (`face-<id>.png`) or, for a folders: source, the
photo's path relative to that root (e.g. `glasses/000123.jpg`); `#` starts a comment, blank lines
are ignored. The paper's 523 removed Kaggle ids (glasses/data/excluded-kaggle-ids.txt) are one such
file, used for Kaggle sources unless --no-exclude; `glasses-train review --apply` writes others.
Every file's sha256 goes into the cache fingerprint, the manifest and the model's registry metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from glasses.config import CLASS_NAMES, EXCLUDED_IDS_FILE
from glasses.files import UserError, file_sha256

KAGGLE_KINDS = ("kaggle", "kaggle-dir")


@dataclass(frozen=True)
class ExclusionFile:
    """One exclusion file, read."""

    path: Path
    sha256: str
    ids: frozenset[str]
    shipped: bool = False  # the paper's list bundled with the package


def normalise_id(entry: str) -> str:
    """'0042' -> '42' (Kaggle ids), './glasses/x.jpg' -> 'glasses/x.jpg' (folder paths)."""
    entry = entry.strip()
    return str(int(entry)) if entry.isdigit() else PurePosixPath(entry).as_posix()


def read_exclusion_file(path: str | Path, *, shipped: bool = False) -> ExclusionFile:
    """Read one exclusion file; a missing or unreadable file is a one-line UserError."""
    path = Path(path).expanduser().resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"exclusion file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read exclusion file {path}: {exc}") from None
    ids = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return ExclusionFile(path=path, sha256=file_sha256(path), ids=frozenset(normalise_id(i) for i in ids if i),
                         shipped=shipped)


def exclusion_files(kind: str, paths: list[str | Path] = (), *, shipped: bool = True) -> list[ExclusionFile]:
    """The files that apply to a source of `kind`: the paper's list for Kaggle sources (unless
    shipped=False, i.e. --no-exclude), then every file given with --exclude, in order."""
    files = [read_exclusion_file(EXCLUDED_IDS_FILE, shipped=True)] if shipped and kind in KAGGLE_KINDS else []
    return files + [read_exclusion_file(p) for p in paths]


def excluded_ids(files: list[ExclusionFile]) -> set[str]:
    """Every id listed in any of the files."""
    return set().union(*(f.ids for f in files)) if files else set()


def exclusion_records(files: list[ExclusionFile], removed: list[tuple[str, int]]) -> list[dict]:
    """Per file: path, sha256, ids listed, and the photos it removed per class (a photo listed in two
    files counts for both)."""
    records = []
    for f in files:
        per_class = {c: 0 for c in CLASS_NAMES}
        for photo_id, label in removed:
            if photo_id in f.ids:
                per_class[CLASS_NAMES[label]] += 1
        records.append({"file": str(f.path), "sha256": f.sha256, "listed": len(f.ids),
                        "shipped": f.shipped, "removed": per_class})
    return records


def manifest_exclusions(manifest_path: str | Path) -> list[dict]:
    """The exclusion records of a split manifest (empty for manifests made before they were recorded)."""
    try:
        manifest = json.loads(Path(manifest_path).read_text())
    except (OSError, ValueError):
        return []
    return list(manifest.get("exclusions") or [])

"""Small file helpers shared by training and serving: atomic JSON writes and file hashes."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path


class UserError(Exception):
    """A problem the user can fix (wrong path, bad tag, damaged state...): the CLIs print it as one line."""


def write_json_atomic(path: str | Path, obj, **dump_kwargs) -> str:
    """Write JSON via a temp file + rename: a process killed mid-write leaves the old file or the new one."""
    text = json.dumps(obj, **dump_kwargs)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)  # only left when the write or the rename failed
    return text


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_keras_file(path: str | Path) -> Path:
    """A `.keras` model file that Keras can open (a zip with config.json), checked without Keras."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise UserError(f"model {path} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        raise UserError(f"{path} is not a Keras model file (.keras zip archive)") from None
    if "config.json" not in names:
        raise UserError(f"{path} is not a Keras model file (no config.json inside)")
    return path


def load_keras_model(path: str | Path):  # noqa: ANN201 (a keras.Model; keras is imported lazily)
    """Load a `.keras` file for inference; a file Keras cannot load is a UserError, not a traceback."""
    path = check_keras_file(path)
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 (Keras raises many types for a damaged file)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load model {path}: {first}") from None

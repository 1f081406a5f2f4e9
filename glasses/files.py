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

"""This project's version, wherever it runs: installed (pip/uv), or only copied (the serving container).

The serving container copies glasses/ and service/ beside pyproject.toml without installing the
package, so its distribution metadata is absent there; pyproject.toml's [project].version is the same
figure, read with tomllib.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from glasses.config import REPO_ROOT

PACKAGE = "glasses-verdict"
PYPROJECT = REPO_ROOT / "pyproject.toml"
UNKNOWN = "unknown"


def package_version(pyproject: Path = PYPROJECT) -> str:
    """The installed package's version, else pyproject.toml's [project].version, else "unknown"."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        pass
    try:
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError):
        return UNKNOWN

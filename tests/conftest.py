"""Shared test fixtures. Area-specific fixtures live in their own test modules (or tests/_<area>.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = Path(os.environ.get("GLASSES_SHARED_DIR", REPO_ROOT.parent / "shared"))
CELEBA_DIR = SHARED_DIR / "data" / "celeba-glasses"

requires_celeba = pytest.mark.skipif(
    not (CELEBA_DIR / "labels.csv").exists(), reason=f"real photos not available at {CELEBA_DIR}"
)


@pytest.fixture(scope="session")
def celeba_dir() -> Path:
    """The shared CelebA glasses folder; skips the test cleanly when ../shared is absent."""
    if not (CELEBA_DIR / "labels.csv").exists():
        pytest.skip(f"real photos not available at {CELEBA_DIR}")
    return CELEBA_DIR


@pytest.fixture()
def bentoml_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty, private BentoML store for one test (sets BENTOML_HOME)."""
    home = tmp_path / "bentoml"
    home.mkdir()
    monkeypatch.setenv("BENTOML_HOME", str(home))
    return home

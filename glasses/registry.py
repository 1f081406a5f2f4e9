"""Read side of the model registry, shared by the service and the training CLI.

The registry is a BentoML model store (`$BENTOML_HOME`, default `~/bentoml`): every registered
model is a `glasses_classifier:<version>` holding `model.keras` plus metadata. Which version is
*promoted* (served by default) is recorded in `$BENTOML_HOME/glasses_registry.json`, beside the
store, so BentoML's own `bentoml models ...` commands keep working unchanged.

Which model the service serves: env GLASSES_MODEL, else the promoted version, else the newest.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import bentoml

from glasses.config import BUNDLED_MODEL_FILE, MODEL_ENV_VAR, MODEL_NAME


class RegistryError(RuntimeError):
    """A registry operation that cannot be done; the message says why in one line."""


def bentoml_home() -> Path:
    """The BentoML home holding the model store (BENTOML_HOME or ~/bentoml)."""
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml").expanduser()


def _pointer_file() -> Path:
    return bentoml_home() / "glasses_registry.json"


def _read_pointer() -> dict:
    path = _pointer_file()
    if not path.exists():
        return {"promoted": None, "history": []}
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read the promotion pointer {path} ({exc}); fix or delete it, then "
                            f"`glasses-train registry promote TAG`") from None
    if not isinstance(state, dict):
        raise RegistryError(f"the promotion pointer {path} is not a JSON object; fix or delete it")
    return state


def list_models() -> list[bentoml.Model]:
    """All registered versions, newest first."""
    try:
        models = bentoml.models.list(MODEL_NAME)
    except bentoml.exceptions.NotFound:  # raised (not []) while no version of the name exists
        return []
    return sorted(models, key=lambda m: m.info.creation_time, reverse=True)


def get_model(tag: str) -> bentoml.Model:
    """A registered model by tag (`glasses_classifier:<version>` or just `<version>`)."""
    full = tag if ":" in tag else f"{MODEL_NAME}:{tag}"
    try:
        return bentoml.models.get(full)
    except bentoml.exceptions.NotFound:
        raise RegistryError(f"no model {full!r} in the store at {bentoml_home()}") from None
    except (bentoml.exceptions.BentoMLException, ValueError) as exc:  # a malformed tag
        raise RegistryError(f"{tag!r} is not a valid model tag: {str(exc).splitlines()[0]}") from None


def promoted_tag() -> str | None:
    """The promoted tag, if one is set and still present in the store."""
    tag = _read_pointer().get("promoted")
    if tag is None:
        return None
    try:
        bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        return None
    return tag


def promote(tag: str) -> str:
    """Make `tag` the version the service serves by default (rollback = promote an older one)."""
    model = get_model(tag)
    full = str(model.tag)
    state = _read_pointer()
    state["promoted"] = full
    state.setdefault("history", []).append({"tag": full, "at": datetime.now(timezone.utc).isoformat()})
    path = _pointer_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".glasses_registry.")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(state, fh, indent=2)
        os.replace(tmp, path)  # atomic: readers see the old or the new pointer, never half of one
    finally:
        Path(tmp).unlink(missing_ok=True)  # only left when the write or the rename failed
    return full


def import_bundled_model(path: Path = BUNDLED_MODEL_FILE) -> str:
    """Import the bundled default `.bentomodel` into the store and return its tag (the store must not
    hold that version yet: `resolve_tag` calls this only for an empty store)."""
    if not path.exists():
        raise RegistryError(f"bundled model {path} is missing")
    model = bentoml.models.import_model(str(path))
    return str(model.tag)


def resolve_tag(import_default: bool = True) -> str:
    """The tag to serve: $GLASSES_MODEL, else promoted, else newest, else the bundled default."""
    env_tag = os.environ.get(MODEL_ENV_VAR)
    if env_tag:
        return str(get_model(env_tag).tag)
    tag = promoted_tag()
    if tag:
        return tag
    models = list_models()
    if models:
        return str(models[0].tag)
    if import_default and BUNDLED_MODEL_FILE.exists():
        return promote(import_bundled_model())
    raise RegistryError(
        f"no {MODEL_NAME} model in the store at {bentoml_home()}; run `glasses-train run` or "
        f"`glasses-train registry import {BUNDLED_MODEL_FILE}`"
    )

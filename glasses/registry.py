"""The model registry: every read and write of the model store goes through this module.

The registry is a BentoML model store (`$BENTOML_HOME`, default `~/bentoml`): every registered
model is a `glasses_classifier:<version>` holding `model.keras` (and `model.tflite` when its LiteRT
conversion passed, see training/convert.py) plus metadata. Which version is *promoted* (served by
default) is recorded in a pointer file, `$BENTOML_HOME/glasses_registry.json`, beside the store, so
BentoML's own `bentoml models ...` commands keep working unchanged.

    store:    save_version, import_version, export_version, list_models, list_versions, get_model
    pointer:  promote, promoted_tag, resolve (GLASSES_MODEL > promoted > newest > bundled)
    versions: model_card (what GET /model shows), check_servable (can this code score it?)
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import bentoml
import yaml

from glasses import preprocessing
from glasses.config import (
    BUNDLED_MODEL_FILE,
    CLASS_MAP,
    DEFAULT_THRESHOLD,
    IMAGE_SIZE,
    LITERT_MODEL_FILE,
    MODEL_ENV_VAR,
    MODEL_FILE,
    MODEL_NAME,
    POSITIVE_CLASS,
)
from glasses.files import UserError, write_json_atomic
from glasses.runtimes import available_runtimes


# Key metrics `list_versions` shows for every version.
KEY_METRICS = ("accuracy", "balanced_accuracy", "roc_auc", "f1", "loss")
POINTER_FILE = "glasses_registry.json"


class RegistryError(UserError):
    """A registry operation that cannot be done; the message says why in one line."""


# --- where the store is -------------------------------------------------------------------------
def bentoml_home() -> Path:
    """The BentoML home holding the model store (BENTOML_HOME or ~/bentoml)."""
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml").expanduser()


def store_dir() -> Path:
    """Where the versions of MODEL_NAME live inside the store."""
    return bentoml_home() / "models" / MODEL_NAME


# --- the store ----------------------------------------------------------------------------------
def save_version(model: Any, *, metadata: dict[str, Any], labels: dict[str, Any], litert: bytes | None = None,
                 files: dict[str, Path] | None = None) -> str:
    """Save a keras.Model (and its checked LiteRT model, if given) as a new `glasses_classifier` version;
    returns its tag. All or nothing: BentoML copies into the store only when the block exits cleanly.
    `files` ({name: path}) are stored beside the model (the run's HTML report and test predictions)."""
    labels = {str(k): str(v) for k, v in labels.items()}
    tmp_path = None
    try:
        with bentoml.models.create(MODEL_NAME, labels=labels, metadata=metadata) as ctx:
            tmp_path = Path(ctx.path)
            model.save(ctx.path_of(MODEL_FILE))
            if litert is not None:
                Path(ctx.path_of(LITERT_MODEL_FILE)).write_bytes(litert)
            for name, source in (files or {}).items():
                shutil.copyfile(source, ctx.path_of(name))
        return str(ctx.tag)
    finally:
        if tmp_path is not None and tmp_path.exists():  # BentoML leaves its temp dir behind
            shutil.rmtree(tmp_path, ignore_errors=True)


def archive_tag(path: Path) -> str:
    """The tag recorded in a `.bentomodel` archive (its model.yaml), read without importing it."""
    try:
        with tarfile.open(path) as archive:
            [member] = [m for m in archive.getmembers() if m.name.lstrip("./") == "model.yaml"]
            info = yaml.safe_load(archive.extractfile(member).read())
        return f"{info['name']}:{info['version']}"
    except Exception as exc:  # noqa: BLE001 (tarfile/yaml/KeyError for anything that is not an archive)
        raise RegistryError(f"cannot import {path}: not a valid .bentomodel archive ({type(exc).__name__})") from None


def import_version(path: str | Path) -> tuple[str, bool]:
    """Import a `.bentomodel` archive into the store (not promoted): (tag, False if already present)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise RegistryError(f"{path} does not exist")
    tag = archive_tag(path)
    try:
        return str(get_model(tag).tag), False
    except RegistryError:
        pass
    try:
        return str(bentoml.models.import_model(str(path)).tag), True
    except bentoml.exceptions.BentoMLException as exc:
        raise RegistryError(f"cannot import {path}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # tarfile/yaml errors for a corrupt archive
        raise RegistryError(f"cannot import {path}: not a valid .bentomodel archive ({type(exc).__name__})") from None


def import_bundled_model(path: Path = BUNDLED_MODEL_FILE) -> str:
    """Import the bundled default `.bentomodel` into the store and return its tag (the store must not
    hold that version yet: `resolve` calls this only for an empty store)."""
    if not path.exists():
        raise RegistryError(f"bundled model {path} is missing")
    return import_version(path)[0]


def export_version(tag: str, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write one version to a `.bentomodel` archive (an existing file only with overwrite)."""
    model = get_model(tag)
    path = Path(path).resolve()  # bentoml resolves relative paths against "/", not the cwd
    if path.suffix != ".bentomodel":
        raise RegistryError(f"export file must end in .bentomodel, got {path.name}")
    if not path.parent.exists():
        raise RegistryError(f"directory {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise RegistryError(f"{path} already exists (--overwrite to replace it)")
    return Path(bentoml.models.export_model(str(model.tag), str(path)))


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


def version_summary(model: bentoml.Model) -> dict[str, Any]:
    """Key facts of one stored version (a row of `registry list`)."""
    meta = model.info.metadata
    metrics = meta.get("metrics", {})
    return {
        "tag": str(model.tag),
        "created": model.info.creation_time.isoformat(timespec="seconds"),
        "profile": meta.get("tuner", {}).get("profile") or model.info.labels.get("profile"),
        **{m: metrics.get(m) for m in KEY_METRICS},
        "threshold": meta.get("threshold"),
        "image_size": meta.get("image_size"),
        "manifest": (meta.get("split_manifest_hash") or "")[:12],
        "forced": model.info.labels.get("forced") == "true",
    }


def list_versions() -> list[dict[str, Any]]:
    """Every stored version, newest first, with `promoted` marked."""
    promoted = promoted_tag()
    return [version_summary(m) | {"promoted": str(m.tag) == promoted} for m in list_models()]


def describe(tag: str) -> dict[str, Any]:
    """Everything stored about one version: tag, path, creation time, promoted, labels, metadata."""
    model = get_model(tag)
    return {"tag": str(model.tag), "path": model.path, "created": model.info.creation_time.isoformat(),
            "promoted": str(model.tag) == promoted_tag(), "labels": model.info.labels,
            "metadata": model.info.metadata}


# --- the promotion pointer ----------------------------------------------------------------------
def _pointer_file() -> Path:
    return bentoml_home() / POINTER_FILE


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
    write_json_atomic(path, state, indent=2)  # readers see the old or the new pointer, never half of one
    return full


def resolve(import_default: bool = True) -> tuple[str, str]:
    """(tag, why) of the version to serve: $GLASSES_MODEL, else promoted, else newest, else bundled."""
    env_tag = os.environ.get(MODEL_ENV_VAR)
    if env_tag:
        try:
            return str(get_model(env_tag).tag), f"pinned by ${MODEL_ENV_VAR}"
        except RegistryError as exc:
            raise RegistryError(f"${MODEL_ENV_VAR}={env_tag}: {exc}") from None
    tag = promoted_tag()
    if tag:
        return tag, "promoted in the registry"
    models = list_models()
    if models:
        return str(models[0].tag), "newest version in the store (none promoted)"
    if import_default and BUNDLED_MODEL_FILE.exists():
        tag = promote(import_bundled_model())
        return tag, f"bundled default {BUNDLED_MODEL_FILE.name} imported into the empty store and promoted"
    raise RegistryError(
        f"no {MODEL_NAME} model in the store at {bentoml_home()}; run `glasses-train run` or "
        f"`glasses-train registry import {BUNDLED_MODEL_FILE}`"
    )


# --- what a stored model is, and whether this code can use it ---------------------------------
def model_card(bento_model: Any) -> dict[str, Any]:
    """What GET /model shows: tag, creation time, metrics, threshold, classes, preprocessing.

    Metadata is written by training/register.py; every key is read with a default so an older or
    hand-registered model still serves.
    """
    meta = dict(bento_model.info.metadata or {})
    return {
        "tag": str(bento_model.tag),
        "name": bento_model.tag.name,
        "version": bento_model.tag.version,
        "created": bento_model.info.creation_time.isoformat(),
        "threshold": float(meta.get("threshold", DEFAULT_THRESHOLD)),
        "calibration": meta.get("calibration") or None,  # glasses.calibration; None = raw probabilities
        "metrics": meta.get("metrics") or {},
        "class_map": meta.get("class_map") or CLASS_MAP,
        "positive_class": POSITIVE_CLASS,
        "preprocessing": {
            "version": meta.get("preprocessing_version", preprocessing.PREPROCESSING_VERSION),
            "image_size": int(meta.get("image_size", IMAGE_SIZE)),
            "served_version": preprocessing.PREPROCESSING_VERSION,
        },
        "labels": dict(bento_model.info.labels or {}),
        "data_source": meta.get("data_source"),
        "data_sources": meta.get("data_sources") or [],
        "data_fingerprint": meta.get("data_fingerprint"),
        "profile": meta.get("profile"),
        "objective": meta.get("objective"),
        "hyperparameters": meta.get("hyperparameters") or {},
        "runtimes": available_runtimes(bento_model),  # model files present: "tf" (model.keras), "litert"
        "litert": meta.get("litert"),  # the conversion check recorded at registration (training/convert.py)
    }


def check_servable(card: dict[str, Any]) -> None:
    """Refuse (RegistryError) a model whose preprocessing or classes differ from what this code applies:
    the service will not serve it, `glasses-train compare` will not score it."""
    prep = card["preprocessing"]
    if prep["version"] != prep["served_version"]:
        raise RegistryError(
            f"model {card['tag']} was trained with preprocessing {prep['version']!r} but this service "
            f"applies {prep['served_version']!r}; retrain it or promote a model built with the current contract"
        )
    if prep["image_size"] not in preprocessing.ALLOWED_SIZES:
        raise RegistryError(f"model {card['tag']} has unsupported image_size {prep['image_size']}")
    index = _positive_index(card["class_map"])
    if index is not None and index != CLASS_MAP[POSITIVE_CLASS]:
        raise RegistryError(f"model {card['tag']} has class map {card['class_map']}: its output is not "
                           f"P({POSITIVE_CLASS}) (expected {CLASS_MAP})")


def _positive_index(class_map: dict) -> int | None:
    """The label index of the positive class in a {name: index} or {index: name} map (None if absent)."""
    try:
        if POSITIVE_CLASS in class_map:
            return int(class_map[POSITIVE_CLASS])
        for key, value in class_map.items():
            if value == POSITIVE_CLASS:
                return int(key)
    except (TypeError, ValueError):
        pass
    return None


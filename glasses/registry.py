"""The model registry: every read and write of the model store goes through this module.

The registry is a BentoML model store (`$BENTOML_HOME`, default `~/bentoml`): every registered
model is a `glasses_classifier:<version>` holding `model.keras` (and `model.tflite` when its LiteRT
conversion passed, see training/convert.py) plus metadata. Aliases (`production`: every worker serves
it; `candidate`: beside it as a canary or a shadow; any other name: a bookmark) and their audit history
live beside the store, so BentoML's own `bentoml models ...` commands keep working unchanged.

    store:    save_version, import_version, export_version, list_models, list_versions, get_model
    aliases:  set_alias, promote, rollback, read_aliases, read_history, promoted_tag,
              resolve (GLASSES_MODEL > production > newest > bundled)
What a stored version is, and whether this code can serve it: glasses/cards.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import re
import shutil
import socket
import tarfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import bentoml
import yaml

from glasses.config import (
    BUNDLED_MODEL_FILE,
    LITERT_MODEL_FILE,
    MODEL_ENV_VAR,
    MODEL_FILE,
    MODEL_NAME,
    PRODUCTION_ALIAS as PRODUCTION,
    REGISTRY_DIR_ENV_VAR,
)
from glasses.files import UserError, write_json_atomic

KEY_METRICS = ("accuracy", "balanced_accuracy", "roc_auc", "f1", "loss")  # shown by `list_versions`
ALIAS_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,31}")
POINTER_FILE = "glasses_registry.json"  # the aliases
HISTORY_FILE = "glasses_registry_history.jsonl"  # every alias move, appended


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
        "test_photos": metrics.get("n"),
        "source": meta.get("data_source"),
        "forced": model.info.labels.get("forced") == "true",
    }


def list_versions() -> list[dict[str, Any]]:
    """Every stored version, newest first, with `promoted` (= production) and its aliases marked."""
    aliases = read_aliases()
    rows = [version_summary(m) | {"aliases": sorted(n for n, e in aliases.items() if e["tag"] == str(m.tag))}
            for m in list_models()]
    return [r | {"promoted": PRODUCTION in r["aliases"]} for r in rows]


def describe(tag: str) -> dict[str, Any]:
    """Everything stored about one version: tag, path, creation time, promoted, labels, metadata."""
    model = get_model(tag)
    return {"tag": str(model.tag), "path": model.path, "created": model.info.creation_time.isoformat(),
            "promoted": str(model.tag) == promoted_tag(), "labels": model.info.labels,
            "metadata": model.info.metadata}


# --- aliases and their audit history ------------------------------------------------------------
# POINTER_FILE {"aliases": {NAME: {"tag", "traffic", "shadow"}}, "promoted": TAG} is replaced atomically:
# readers (every worker, each second) see the old or the new state and need no lock (the store may be
# mounted read-only). HISTORY_FILE gets one JSON line per move, appended. Writers hold an exclusive flock.
def registry_dir() -> Path:
    """Where the alias file and history live: $GLASSES_REGISTRY_DIR (a read-only shared store), else BENTOML_HOME."""
    return Path(os.environ.get(REGISTRY_DIR_ENV_VAR) or bentoml_home()).expanduser()


def _pointer_file(name: str = POINTER_FILE) -> Path:
    return registry_dir() / name


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Exclusive lock for one registry write (blocks while another CLI call writes)."""
    registry_dir().mkdir(parents=True, exist_ok=True)
    with open(_pointer_file("glasses_registry.lock"), "a") as fh:  # closing the file releases the lock
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def read_aliases() -> dict[str, dict[str, Any]]:
    """Every alias: {name: {"tag", "traffic", "shadow"}} (a pointer of older code: production only)."""
    path = _pointer_file()
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read the promotion pointer {path} ({exc}); fix or delete it, then "
                            f"`glasses-train registry promote TAG`") from None
    if not isinstance(state, dict) or not isinstance(state.get("aliases", {}), dict):
        raise RegistryError(f"the promotion pointer {path} is not a JSON object of aliases; fix or delete it")
    aliases = {name: {"tag": e["tag"], "traffic": float(e.get("traffic") or 0.0), "shadow": bool(e.get("shadow"))}
               for name, e in state.get("aliases", {}).items()}
    if PRODUCTION not in aliases and state.get("promoted"):
        aliases[PRODUCTION] = {"tag": state["promoted"], "traffic": 0.0, "shadow": False}
    return aliases


def read_history() -> list[dict[str, Any]]:
    """Every recorded alias move, oldest first."""
    path = _pointer_file(HISTORY_FILE)
    try:
        return [json.loads(line) for line in (path.read_text().splitlines() if path.exists() else [])]
    except ValueError:
        raise RegistryError(f"the registry history {path} has a line that is not JSON (a hand edit?)") from None


def set_alias(name: str, tag: str | None, *, traffic: float = 0.0, shadow: bool = False,
              note: str | None = None, action: str = "alias set") -> dict[str, Any]:
    """Point alias `name` at `tag` (None: remove it); atomic, locked, recorded. Returns the history entry."""
    if not ALIAS_PATTERN.fullmatch(name):
        raise RegistryError(f"alias {name!r} must match {ALIAS_PATTERN.pattern}")
    if not 0.0 <= traffic <= 1.0 or (traffic and shadow):
        raise RegistryError(f"--traffic must be a share between 0 and 1 without --shadow, got {traffic}"
                            + (" with --shadow" if shadow else ""))
    if name == PRODUCTION and (traffic or shadow):
        raise RegistryError("production answers what the candidate does not: give --traffic/--shadow to the candidate")
    full = str(get_model(tag).tag) if tag is not None else None
    with _locked():
        aliases = read_aliases()
        before = aliases.get(name, {}).get("tag")
        if full is None:
            if name not in aliases:
                raise RegistryError(f"alias {name!r} is not set (set ones: {', '.join(sorted(aliases)) or 'none'})")
            if name == PRODUCTION:
                raise RegistryError("production cannot be unset: promote or roll back another version instead")
            del aliases[name]
        else:
            aliases[name] = {"tag": full, "traffic": float(traffic), "shadow": bool(shadow)}
        state = {"aliases": aliases, "promoted": aliases.get(PRODUCTION, {}).get("tag")}
        write_json_atomic(_pointer_file(), state, indent=2)
        entry = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "action": action,
                 "alias": name, "from": before, "to": full, "traffic": traffic, "shadow": shadow,
                 "by": _who(), "note": note}
        with open(_pointer_file(HISTORY_FILE), "a") as fh:
            print(json.dumps(entry), file=fh, flush=True)
            os.fsync(fh.fileno())
    return entry


def _who() -> str:
    """user@host for the audit history (uidN@host for a container user without a passwd entry)."""
    with contextlib.suppress(KeyError, OSError):
        return f"{getpass.getuser()}@{socket.gethostname()}"
    return f"uid{os.getuid()}@{socket.gethostname()}"


def promote(tag: str, note: str | None = None) -> str:
    """Point `production` at `tag`: every running worker serves it within seconds (rollback: `rollback`)."""
    return set_alias(PRODUCTION, tag, note=note, action="promote")["to"]


def rollback(note: str | None = None) -> dict[str, Any]:
    """Production back to where it was before its latest move not yet undone (rollbacks stack)."""
    undone = 0
    for entry in reversed([e for e in read_history() if e.get("alias") == PRODUCTION]):
        if entry.get("action") == "rollback":
            undone += 1
        elif undone:
            undone -= 1
        elif entry.get("from"):  # only the very first production move has none
            return set_alias(PRODUCTION, entry["from"], note=note, action="rollback")
    raise RegistryError("nothing to roll back to: production has no earlier target in the history")


def promoted_tag() -> str | None:
    """The production tag, if one is set and still present in the store (its model.yaml is there: a
    file check, not BentoML's ~20 ms parse of it, which server start-up would pay once more)."""
    tag = read_aliases().get(PRODUCTION, {}).get("tag")
    name, _, version = (tag or "").partition(":")
    present = name == MODEL_NAME and version.isalnum() and (store_dir() / version / "model.yaml").is_file()
    return tag if present else None


def resolve(import_default: bool = True) -> tuple[str, str]:
    """(tag, why) of the version to serve: $GLASSES_MODEL, else production, else newest, else bundled."""
    env_tag = os.environ.get(MODEL_ENV_VAR)
    if env_tag:
        try:
            return str(get_model(env_tag).tag), f"pinned by ${MODEL_ENV_VAR}"
        except RegistryError as exc:
            raise RegistryError(f"${MODEL_ENV_VAR}={env_tag}: {exc}") from None
    tag = promoted_tag()
    if tag:
        return tag, "production in the registry"
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

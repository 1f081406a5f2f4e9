"""Register: a tuned + evaluated run -> a `glasses_classifier` version in the BentoML model store.

    run directory (model.keras, tune.json, evaluation.json)
      -> quality gate: the candidate's gate metric (profile: gate_metric, gate_floor) must reach the
         floor and must not be below the promoted model's on the *same* test manifest (same hash);
         `force` overrides, is recorded in the labels, and the forced version is not promoted
         (serving it takes an explicit `registry promote`)
      -> the report must be the run's own: made from this model.keras (sha256) on the manifest it
         was tuned on (a re-tuned run with an old evaluation.json is refused)
      -> bentoml.models.create(MODEL_NAME, labels, metadata) as ctx; model.save(ctx.path_of("model.keras"))
         (atomic: BentoML copies into the store only when the block exits cleanly; on an exception
         nothing reaches the store and the temporary directory is removed)
      -> promote (pointer file beside the store, see glasses/registry.py) unless told not to

`glasses-train registry list|show|promote|export|import` manage the store; BentoML's own
`bentoml models list/get/export/import` work on the same store ($BENTOML_HOME).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from glasses.config import CLASS_MAP, CLASS_NAMES, MODEL_NAME, POSITIVE_CLASS, REPO_ROOT
from glasses.preprocessing import PREPROCESSING_VERSION
from training.cli import UserError

KEY_METRICS = ("accuracy", "balanced_accuracy", "roc_auc", "f1", "loss")


@dataclass
class GateDecision:
    """Outcome of the quality gate for one candidate."""

    passed: bool
    metric: str
    value: float | None
    floor: float
    promoted_tag: str | None
    promoted_value: float | None
    reason: str

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class RegisterResult:
    """What `register` did."""

    tag: str | None
    promoted: bool
    forced: bool
    gate: GateDecision


# --- lineage helpers ----------------------------------------------------------------------------


def git_commit(repo: Path = REPO_ROOT) -> str:
    """The current commit (+ '-dirty' if tracked files changed), or 'unknown' outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{sha}-dirty" if dirty else sha
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict[str, str]:
    """Versions of the libraries that produced the model."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("tensorflow-cpu", "tensorflow", "keras", "keras-tuner", "bentoml", "numpy", "pillow"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def _clean(obj):
    """Make a value acceptable as BentoML metadata (no None; paths and tuples as str / lists)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj if v is not None]
    if isinstance(obj, Path):
        return str(obj)
    return obj


# --- the gate -----------------------------------------------------------------------------------


def promoted_metric(metric: str, manifest_hash: str) -> tuple[str | None, float | None]:
    """(tag, value of `metric`) of the promoted model if it was tested on the same manifest."""
    from glasses import registry

    tag = registry.promoted_tag()
    if tag is None:
        return None, None
    meta = registry.get_model(tag).info.metadata
    if meta.get("split_manifest_hash") != manifest_hash:
        return tag, None
    value = meta.get("metrics", {}).get(metric)
    return tag, None if value is None else float(value)


def check_gate(metrics: dict, manifest_hash: str, *, metric: str, floor: float) -> GateDecision:
    """Pass when metrics[metric] >= floor and >= the promoted model's value on the same test manifest."""
    value = metrics.get(metric)
    tag, best = promoted_metric(metric, manifest_hash)
    if value is None:
        return GateDecision(False, metric, None, floor, tag, best, f"test {metric} is undefined (one class only?)")
    if value < floor:
        return GateDecision(False, metric, value, floor, tag, best,
                            f"test {metric} {value:.4f} is below the floor {floor:.4f}")
    if best is not None and value < best:
        return GateDecision(False, metric, value, floor, tag, best,
                            f"test {metric} {value:.4f} is below the promoted {tag} ({best:.4f}) on the same test set")
    against = f", promoted {tag} has {best:.4f}" if best is not None else ""
    return GateDecision(True, metric, value, floor, tag, best,
                        f"test {metric} {value:.4f} >= floor {floor:.4f}{against}")


# --- registration -------------------------------------------------------------------------------


def build_metadata(summary: dict, report: dict, *, gate: GateDecision, forced: bool) -> dict:
    """Everything the registry records about a model (lineage, metrics, settings, environment)."""
    profile = summary["profile_config"]
    metrics = dict(report["metrics"])
    return _clean({
        "metrics": metrics,
        "validation_metrics": report.get("validation_metrics"),
        "threshold": report["threshold"]["value"],
        "threshold_method": report["threshold"]["method"],
        "calibration": report.get("calibration"),
        "ece": report.get("ece"),
        "robustness": _robustness_summary(report.get("robustness")),
        "profile": profile["name"],
        "objective": profile["objective"],
        "hyperparameters": summary.get("best_hyperparameters"),
        "params": summary.get("params"),
        "tuner": {
            "profile": profile["name"],
            "objective": profile["objective"],
            "best_trial_id": summary.get("best_trial_id"),
            "best_score": summary.get("best_score"),
            "trials": len(summary.get("trials", [])),
            "trial_wall_times_s": {t["trial_id"]: t.get("wall_time_s") for t in summary.get("trials", [])},
            "trials_time_total_s": summary.get("trials_time_total_s"),
            "resumed": summary.get("resumed"),
            "settings": {k: "none" if v is None else v for k, v in profile.items() if k not in ("name", "description")},
        },
        "data_source": summary.get("data_source"),
        "data_sources": summary.get("data_sources") or [summary.get("data_source")],
        "data_fingerprint": summary["data_fingerprint"],
        "split_manifest_hash": report["manifest_hash"],
        "split_manifest_path": report["manifest_path"],
        "image_size": report["image_size"],
        "preprocessing_version": PREPROCESSING_VERSION,
        "class_map": dict(CLASS_MAP),
        "class_names": list(CLASS_NAMES),
        "positive_class": POSITIVE_CLASS,
        "output": "sigmoid P(glasses), input float32 (size, size, 3) in [0, 1]",
        "training_wall_time_s": summary.get("training_wall_time_s"),
        "search_wall_time_s": summary.get("search_wall_time_s"),
        "library_versions": library_versions(),
        "git_commit": git_commit(),
        "gate": gate.as_dict(),
        "forced": forced,
        "registered_at": datetime.now(timezone.utc).isoformat(),
    })


def _robustness_summary(conditions: dict | None) -> dict | None:
    """ROC-AUC and recall per robustness condition (the full report stays in the run directory)."""
    if not conditions:
        return None
    return {name: {k: row["all"][k] for k in ("roc_auc", "recall", "photos", "glasses_photos")}
            for name, row in conditions.items()}


def save_to_store(model, *, metadata: dict, labels: dict[str, str]) -> str:
    """Save a keras.Model as a new `glasses_classifier` version; returns its tag. All or nothing."""
    import bentoml

    labels = {str(k): str(v) for k, v in labels.items()}
    tmp_path = None
    try:
        with bentoml.models.create(MODEL_NAME, labels=labels, metadata=metadata) as ctx:
            tmp_path = Path(ctx.path)
            model.save(ctx.path_of("model.keras"))
        return str(ctx.tag)
    finally:
        if tmp_path is not None and tmp_path.exists():  # BentoML leaves its temp dir behind
            shutil.rmtree(tmp_path, ignore_errors=True)


def register(run_dir: str | Path, *, force: bool = False, promote: bool = True) -> RegisterResult:
    """Gate, register (and promote) the model of a tuned + evaluated run directory.

    Raises UserError (one line) when the gate refuses and force is False; nothing is registered then.
    """
    import keras

    from glasses import registry
    from glasses.files import file_sha256
    from training.evaluate import REPORT_FILE
    from training.tune import read_tune_summary

    run_dir = Path(run_dir)
    summary = read_tune_summary(run_dir)
    report_path = run_dir / REPORT_FILE
    evaluate_again = f"run `glasses-train evaluate --run-dir {run_dir}`"
    if not report_path.exists():
        raise UserError(f"{report_path} does not exist; {evaluate_again} first")
    report = json.loads(report_path.read_text())
    if report.get("model_sha256") != file_sha256(run_dir / "model.keras"):
        raise UserError(f"{report_path} was not made from {run_dir / 'model.keras'}; {evaluate_again}")
    if report.get("manifest_hash") != summary["manifest_hash"]:
        raise UserError(f"{report_path} scores another split manifest than the run was tuned on; {evaluate_again}")
    profile = summary["profile_config"]
    gate = check_gate(report["metrics"], report["manifest_hash"], metric=profile["gate_metric"],
                      floor=float(profile["gate_floor"]))
    if not gate.passed and not force:
        raise UserError(f"quality gate refused the model: {gate.reason} (use --force to register anyway)")
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    metadata = build_metadata(summary, report, gate=gate, forced=force and not gate.passed)
    labels = {
        "profile": profile["name"],
        "objective": profile["objective"],
        "gate": "passed" if gate.passed else "forced",
        "forced": str(bool(force and not gate.passed)).lower(),
        "data": summary["data_fingerprint"][:12],
        "run": run_dir.name,
    }
    tag = save_to_store(model, metadata=metadata, labels=labels)
    (run_dir / "registered.json").write_text(json.dumps({"tag": tag, "gate": gate.as_dict()}, indent=2))
    forced = force and not gate.passed
    if promote and not forced:
        registry.promote(tag)
    return RegisterResult(tag=tag, promoted=promote and not forced, forced=forced, gate=gate)


# --- registry management ------------------------------------------------------------------------


def model_summary(model) -> dict:
    """Key facts of one stored version (for `registry list`)."""
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


def list_versions() -> list[dict]:
    """Every stored version, newest first, with `promoted` marked."""
    from glasses import registry

    promoted = registry.promoted_tag()
    return [model_summary(m) | {"promoted": str(m.tag) == promoted} for m in registry.list_models()]


def export_version(tag: str, path: str | Path) -> Path:
    """Write one version to a `.bentomodel` archive."""
    import bentoml

    from glasses import registry

    model = registry.get_model(tag)
    path = Path(path).resolve()  # bentoml resolves relative paths against "/", not the cwd
    if path.suffix != ".bentomodel":
        raise UserError(f"export file must end in .bentomodel, got {path.name}")
    if not path.parent.exists():
        raise UserError(f"directory {path.parent} does not exist")
    return Path(bentoml.models.export_model(str(model.tag), str(path)))


def import_version(path: str | Path) -> str:
    """Import a `.bentomodel` archive into the store; returns its tag (not promoted)."""
    import bentoml

    path = Path(path).resolve()
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        return str(bentoml.models.import_model(str(path)).tag)
    except bentoml.exceptions.BentoMLException as exc:
        raise UserError(f"cannot import {path}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # tarfile/yaml errors for a corrupt archive
        raise UserError(f"cannot import {path}: not a valid .bentomodel archive ({type(exc).__name__})") from None


# --- CLI ----------------------------------------------------------------------------------------


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def _registry_cli(args) -> int:
    from glasses import registry

    if args.action == "list":
        rows = list_versions()
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        if not rows:
            print(f"no {MODEL_NAME} versions in {registry.bentoml_home()}")
            return 0
        cols = ("tag", "created", "profile", "accuracy", "balanced_accuracy", "roc_auc", "threshold", "manifest")
        table = [[("* " if r["promoted"] else "  ") + r["tag"]] + [_fmt(r[c]) for c in cols[1:]] for r in rows]
        widths = [max(len(x) for x in col) for col in zip(["  tag", *cols[1:]], *table)]
        print("  ".join(h.ljust(w) for h, w in zip(["  tag", *cols[1:]], widths)))
        for row in table:
            print("  ".join(x.ljust(w) for x, w in zip(row, widths)))
        print("(* = promoted: served by default)")
    elif args.action == "show":
        model = registry.get_model(args.tag)
        info = {"tag": str(model.tag), "path": model.path, "created": model.info.creation_time.isoformat(),
                "promoted": str(model.tag) == registry.promoted_tag(), "labels": model.info.labels,
                "metadata": model.info.metadata}
        print(json.dumps(info, indent=2, default=str))
    elif args.action == "promote":
        print(f"promoted {registry.promote(args.tag)}")
    elif args.action == "export":
        path = export_version(args.tag, args.file)
        print(f"exported {registry.get_model(args.tag).tag} -> {path}")
    elif args.action == "import":
        print(f"imported {import_version(args.file)} (not promoted; `glasses-train registry promote TAG`)")
    return 0


def _register_cli(args) -> int:
    result = register(args.run_dir, force=args.force, promote=not args.no_promote)
    print(f"registered {result.tag} in {_store_dir()} ({result.gate.reason}{'; FORCED' if result.forced else ''})")
    print(f"promoted: {'yes' if result.promoted else 'no'}"
          + (f" (forced past the gate: `glasses-train registry promote {result.tag}` to serve it)" if result.forced else ""))
    return 0


def _store_dir() -> Path:
    from glasses import registry

    return registry.bentoml_home() / "models" / MODEL_NAME


def add_cli(subparsers) -> None:
    """`glasses-train register` and `glasses-train registry list|show|promote|export|import`."""
    p = subparsers.add_parser("register", help="quality gate + save a run's model into the BentoML store")
    p.add_argument("--run-dir", required=True, type=Path, help="run directory (tune + evaluate done)")
    p.add_argument("--force", action="store_true", help="register even if the quality gate refuses (recorded)")
    p.add_argument("--no-promote", action="store_true", help="register without promoting")
    p.set_defaults(func=_register_cli)

    r = subparsers.add_parser("registry", help="list / show / promote / export / import model versions",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = r.add_subparsers(dest="action", required=True)
    ls = sub.add_parser("list", help="versions with key metrics; * = promoted")
    ls.add_argument("--json", action="store_true")
    sub.add_parser("show", help="labels and metadata of one version").add_argument("tag")
    sub.add_parser("promote", help="serve this version by default (rollback = promote an older one)").add_argument("tag")
    ex = sub.add_parser("export", help="write a version to a .bentomodel file")
    ex.add_argument("tag")
    ex.add_argument("file", type=Path)
    sub.add_parser("import", help="import a .bentomodel file").add_argument("file", type=Path)
    r.set_defaults(func=_registry_cli)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `glasses-train register` / `glasses-train registry`")

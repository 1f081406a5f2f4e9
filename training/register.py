"""Register: a tuned + evaluated run -> a `glasses_classifier` version in the BentoML model store.

    run directory (training/rundir.py: model, tune.json, evaluation.json)
      -> quality gate: the candidate's gate metric (profile: gate_metric, gate_floor) must reach the
         floor and must not be below the promoted model's on the *same* test manifest (same hash);
         `force` overrides, is recorded in the labels, and the forced version is not promoted
         (serving it takes an explicit `registry promote`)
      -> the report must be the run's own: made from this model file (sha256) on the manifest it
         was tuned on (a re-tuned run with an old evaluation.json is refused)
      -> LiteRT conversion (training/convert.py), checked against Keras on the test photos: model.tflite
         beside model.keras when max |dp| <= 1e-5, else refused in one line (the version serves on TF)
      -> glasses.registry.save_version (all or nothing) with lineage metadata and labels
      -> promote (the production alias) unless told not to, and only if it is not below production
         on the same photos: when production was tested on another manifest, both are re-scored on
         this run's test photos (training/compare.py: promotion_decision), else it is not promoted

Managing the stored versions is `glasses-train registry` (training/registry_cli.py).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from glasses.config import CLASS_MAP, CLASS_NAMES, POSITIVE_CLASS, REPO_ROOT, TuningProfile
from glasses.preprocessing import PREPROCESSING_VERSION
from training import acceleration
from training.cli import UserError
from training.exclusions import manifest_exclusions
from training.rundir import RunDir


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
    why: str = ""  # why it was (not) promoted, in one line
    litert: str = ""  # one line: the LiteRT conversion accepted or refused, and why
    litert_accepted: bool = False


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


def build_metadata(summary: dict, report: dict, profile: TuningProfile, *, gate: GateDecision, forced: bool,
                   probe: list[float] | None = None) -> dict:
    """Everything the registry records about a model (lineage, metrics, settings, environment)."""
    metrics = dict(report["metrics"])
    return _clean({
        "metrics": metrics,
        "validation_metrics": report.get("validation_metrics"),
        "threshold": report["threshold"]["value"],
        "threshold_method": report["threshold"]["method"],
        "calibration": report.get("calibration"),
        "ece": report.get("ece"),
        "robustness": _robustness_summary(report.get("robustness")),
        "profile": profile.name,
        "objective": profile.objective,
        "hyperparameters": summary.get("best_hyperparameters"),
        "params": summary.get("params"),
        "tuner": {
            "profile": profile.name,
            "objective": profile.objective,
            "best_trial_id": summary.get("best_trial_id"),
            "best_score": summary.get("best_score"),
            "trials": len(summary.get("trials", [])),
            "trial_wall_times_s": {t["trial_id"]: t.get("wall_time_s") for t in summary.get("trials", [])},
            "trials_time_total_s": summary.get("trials_time_total_s"),
            "resumed": summary.get("resumed"),
            "settings": {k: "none" if v is None else v for k, v in profile.as_dict().items()
                         if k not in ("name", "description")},
        },
        "data_source": summary.get("data_source"),
        "data_sources": summary.get("data_sources") or [summary.get("data_source")],
        "data_fingerprint": summary["data_fingerprint"],
        "split_manifest_hash": report["manifest_hash"],
        "split_manifest_path": report["manifest_path"],
        "data_exclusions": manifest_exclusions(report["manifest_path"]),  # exclusion files: path, sha256, removed
        "image_size": report["image_size"],
        "reference_distribution": report.get("reference_distribution"),  # the service's drift baseline
        "parity_probe": probe,  # the service refuses a version that does not reproduce it
        "preprocessing_version": PREPROCESSING_VERSION,
        "framing": report.get("framing", "none"),  # the service frames faces as training did ("face")
        "class_map": dict(CLASS_MAP),
        "class_names": list(CLASS_NAMES),
        "positive_class": POSITIVE_CLASS,
        "output": "sigmoid P(glasses), input float32 (size, size, 3) in [0, 1]",
        "training_wall_time_s": summary.get("training_wall_time_s"),
        "search_wall_time_s": summary.get("search_wall_time_s"),
        "training_hardware": acceleration.hardware_summary(summary.get("acceleration")),
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
    return {name: {k: row["all"][k] for k in ("roc_auc", "recall", "photos", "glasses_photos", "no_face") if k in row["all"]}
            for name, row in conditions.items()}


def register(run_dir: str | Path, *, force: bool = False, promote: bool = True) -> RegisterResult:
    """Gate, register (and promote) the model of a tuned + evaluated run directory.

    Raises UserError (one line) when the gate refuses and force is False; nothing is registered then.
    """
    from glasses import registry
    from glasses.files import load_keras_model
    from glasses.monitoring import record_probe
    from training import convert
    from training.report import PREDICTIONS_FILE, REPORT_HTML

    run = RunDir(run_dir)
    summary, profile, report = _run_and_report(run)
    gate = check_gate(report["metrics"], report["manifest_hash"], metric=profile.gate_metric,
                      floor=profile.gate_floor)
    if not gate.passed and not force:
        raise UserError(f"quality gate refused the model: {gate.reason} (use --force to register anyway)")
    model = load_keras_model(run.model)
    metadata = build_metadata(summary, report, profile, gate=gate, forced=force and not gate.passed,
                              probe=record_probe(model, int(report["image_size"])))
    photos = convert.test_pixels(report["manifest_path"])
    conversion = convert.convert_checked(model, convert.check_images(photos, int(report["image_size"])))
    metadata["litert"] = conversion.metadata()
    labels = {
        "profile": profile.name,
        "objective": profile.objective,
        "gate": "passed" if gate.passed else "forced",
        "forced": str(bool(force and not gate.passed)).lower(),
        "data": summary["data_fingerprint"][:12],
        "run": run.name,
    }
    kept = {name: run.path / name for name in (REPORT_HTML, PREDICTIONS_FILE) if (run.path / name).exists()}
    tag = registry.save_version(model, metadata=metadata, labels=labels, litert=conversion.tflite, files=kept)
    run.write_json(run.registered, {"tag": tag, "gate": gate.as_dict()})
    forced = force and not gate.passed
    promoted, why = False, "forced past the gate" if forced else "--no-promote"
    if promote and not forced:
        from training.compare import promotion_decision

        promoted, why = promotion_decision(tag, gate, summary.get("data_source"),
                                           Path(summary["manifest_path"]).parents[2])
    if promoted:
        registry.promote(tag, note=f"register --run-dir {run.name}: {why}")
    return RegisterResult(tag=tag, promoted=promoted, forced=forced, gate=gate, why=why,
                          litert=conversion.reason, litert_accepted=conversion.accepted)


def _run_and_report(run: RunDir) -> tuple[dict, TuningProfile, dict]:
    """(tune.json, profile, evaluation.json) of a run, refused unless the report is this model's own,
    made on the manifest the run was tuned on."""
    from glasses.files import file_sha256

    summary = run.read_tune_summary()
    profile = run.read_profile(summary)
    evaluate_again = f"run `glasses-train evaluate --run-dir {run.path}`"
    if not run.report.exists():
        raise UserError(f"{run.report} does not exist; {evaluate_again} first")
    report = json.loads(run.report.read_text())
    if report.get("model_sha256") != file_sha256(run.model):
        raise UserError(f"{run.report} was not made from {run.model}; {evaluate_again}")
    if report.get("manifest_hash") != summary["manifest_hash"]:
        raise UserError(f"{run.report} scores another split manifest than the run was tuned on; {evaluate_again}")
    return summary, profile, report


# --- CLI ----------------------------------------------------------------------------------------


def _register_cli(args) -> int:
    from glasses import registry

    result = register(args.run_dir, force=args.force, promote=not args.no_promote)
    print(f"registered {result.tag} in {registry.store_dir()} ({result.gate.reason}{'; FORCED' if result.forced else ''})")
    print(result.litert, file=sys.stdout if result.litert_accepted else sys.stderr)
    print(f"promoted: {'yes' if result.promoted else 'no'} ({result.why})"
          + (f"; `glasses-train registry promote {result.tag}` to serve it" if not result.promoted else ""))
    return 0


def add_cli(subparsers) -> None:
    """`glasses-train register --run-dir D [--force] [--no-promote]`."""
    p = subparsers.add_parser(
        "register", help="quality gate + save a run's model into the BentoML store",
        description="Check a tuned and evaluated run against the quality gate, save its model as a new "
                    "version in the BentoML store (the registry) and promote it unless --no-promote or forced.")
    p.add_argument("--run-dir", required=True, type=Path, help="run directory (tune + evaluate done)")
    p.add_argument("--force", action="store_true", help="register even if the quality gate refuses (recorded)")
    p.add_argument("--no-promote", action="store_true", help="register without promoting")
    p.set_defaults(func=_register_cli)

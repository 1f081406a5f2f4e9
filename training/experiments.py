"""Experiments: the paper's ladder on one data source, with the paper's numbers beside ours.

    prepare(source) -> for perceptron, first CNN, dropout CNN, batch-norm CNN, batch-norm CNN + LR
    decay: fit `epochs` epochs (train.py) and evaluate on test (threshold 0.5, as the paper)
    -> Hyperband with the profile (tune.py; resumes / reuses a finished search of the same data),
       or, with --tuned-run DIR, the evaluated model of a finished `glasses-train run` on the same
       split manifest (no search, no refit), or no Hyperband row with --no-hyperband
    -> results.md (markdown table) + results.json + one report/curves folder per model in
       WORK_DIR/experiments/<timestamp>-<profile>/
A ladder model already fitted in the same --out directory (same manifest, same epochs) is reused,
so an interrupted run continues, and the ladder can run first and the Hyperband row be added later.

The paper's figures are on the Kaggle GAN faces; on another source (e.g. CelebA photos, 5.7% glasses)
the comparison is indicative only, which the table header says.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from glasses.config import DEFAULT_THRESHOLD, PAPER_RESULTS, TUNING_PROFILES, WORK_DIR
from glasses.files import write_json_atomic
from training.cli import UserError

LADDER_LABELS = {
    "perceptron": "Perceptron",
    "first_cnn": "First CNN",
    "dropout_cnn": "CNN + dropout",
    "batchnorm_cnn": "CNN + batch norm",
    "batchnorm_cnn_lr_decay": "CNN + batch norm + LR decay",
    "hyperband": "Hyperband best model",
}


def _f(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def results_table(rows: list[dict], *, source: str, counts: dict, profile: str) -> str:
    """The markdown results document."""
    test = counts.get("test", {})
    n_test = sum(test.values())
    share = test.get("glasses", 0) / n_test if n_test else 0.0
    lines = [
        "# The paper's ladder, reproduced",
        "",
        f"Data: `{source}`; test split {n_test} images ({share:.1%} glasses). Hyperband profile `{profile}`. "
        "Threshold 0.5 for the ladder (as the paper); the Hyperband row uses the profile's threshold rule.",
        "Paper figures are Ghezzi & Limoncini's on the Kaggle GAN faces (Hyperband: after cleaning); "
        "on other data they are a reference, not a target. With imbalanced classes, accuracy is "
        "dominated by the majority class: read balanced accuracy and ROC-AUC.",
        "",
        "| Model | Params | Epochs | Test acc | Test loss | Balanced acc | ROC-AUC | F1 (glasses) "
        "| Paper acc | Paper loss | Train time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m, paper = r["metrics"], PAPER_RESULTS.get(r["name"], {})
        lines.append(
            f"| {LADDER_LABELS.get(r['name'], r['name'])} | {r['params']:,} | {r['epochs']} | {_f(m['accuracy'])} "
            f"| {_f(m['loss'])} | {_f(m['balanced_accuracy'])} | {_f(m['roc_auc'])} | {_f(m['f1'])} "
            f"| {_f(paper.get('accuracy'))} | {_f(paper.get('loss'), 2)} | {r['seconds']:.0f} s |"
        )
    return "\n".join(lines) + "\n"


def experiments(
    source: str,
    *,
    profile: str = "paper",
    epochs: int | None = None,
    size: int | None = None,
    work_dir: str | Path = WORK_DIR,
    out_dir: str | Path | None = None,
    ladder: tuple[str, ...] | None = None,
    fresh: bool = False,
    tuned_run: str | Path | None = None,
    hyperband: bool = True,
) -> Path:
    """Run the ladder + Hyperband on `source`; returns the path of results.md."""
    from training import models
    from training.prepare import prepare
    from training.tune import get_profile

    config = get_profile(profile)
    epochs = epochs or config.max_epochs
    work_dir = Path(work_dir)
    names = ladder or tuple(models.LADDER)
    unknown = [n for n in names if n not in models.LADDER]
    if unknown:
        raise UserError(f"unknown ladder model(s) {', '.join(unknown)}; known: {', '.join(models.LADDER)}")
    out_dir = Path(out_dir) if out_dir else work_dir / "experiments" / f"{time.strftime('%Y%m%d-%H%M%S')}-{profile}"
    out_dir.mkdir(parents=True, exist_ok=True)

    data = prepare(source, size=size or config.image_size, work_dir=work_dir)
    manifest = data.manifest_path
    tuned_row = tuned_run_row(tuned_run, manifest) if tuned_run else None  # fail before hours of fitting
    rows = [ladder_row(name, manifest, out_dir / name, epochs=epochs, config=config) for name in names]
    if not hyperband:
        tuned_row = None
    elif tuned_run is None:
        tuned_row = hyperband_row(manifest, config, profile=profile, work_dir=work_dir, fresh=fresh)
    else:
        print(f"== hyperband: the evaluated model of {tuned_run}", flush=True)
    if tuned_row:
        rows.append(tuned_row)
    table = results_table(rows, source=source, counts=data.counts, profile=profile)
    (out_dir / "results.md").write_text(table)
    write_json_atomic(out_dir / "results.json", {"source": source, "profile": profile, "epochs": epochs,
                                                 "manifest": str(manifest), "rows": rows}, indent=2)
    print(table)
    print(f"results: {out_dir / 'results.md'}")
    return out_dir / "results.md"


def ladder_row(name: str, manifest: Path, model_dir: Path, *, epochs: int, config: Any) -> dict:
    """Fit and evaluate one ladder model into `model_dir`, or reuse its row.json from the same manifest and epochs."""
    from training.data import manifest_hash
    from training.evaluate import evaluate, format_metrics
    from training.train import fit_ladder_model

    row_file = model_dir / "row.json"
    done = json.loads(row_file.read_text()) if row_file.exists() else {}
    if done.get("manifest_hash") == manifest_hash(manifest) and done.get("epochs_asked") == epochs:
        print(f"== {name}: fitted before in {model_dir.parent}, reused", flush=True)
        return done
    print(f"== {name} ({epochs} epochs)", flush=True)
    model, history, seconds = fit_ladder_model(name, manifest, epochs=epochs, batch_size=config.batch_size,
                                               seed=config.seed)
    report = evaluate(model, manifest, threshold=DEFAULT_THRESHOLD, history=history, out_dir=model_dir,
                      batch_size=config.batch_size, title=LADDER_LABELS[name])
    print(f"   {format_metrics(report['metrics'])}", flush=True)
    row = {"name": name, "params": report["params"], "epochs": len(history.get("loss", [])),
           "seconds": seconds, "metrics": report["metrics"], "report": report.get("report_path"),
           "manifest_hash": report["manifest_hash"], "epochs_asked": epochs}
    write_json_atomic(row_file, row, indent=2)
    return row


def hyperband_row(manifest: Path, config: Any, *, profile: str, work_dir: Path, fresh: bool) -> dict:
    """Run (or resume) the Hyperband search with `config` into a new run directory; its evaluated row."""
    from training.evaluate import evaluate_run, format_metrics
    from training.rundir import RunDir
    from training.tune import tune

    print(f"== hyperband (profile {profile})", flush=True)
    result = tune(manifest, config, fresh=fresh, work_dir=work_dir, run_dir=RunDir.new(work_dir, profile).path)
    if result.role == "worker":
        raise UserError("experiments cannot run as a distributed-search worker; unset KERASTUNER_* variables")
    print(f"   {format_metrics(evaluate_run(result.run_dir)['metrics'])}", flush=True)
    return tuned_run_row(result.run_dir, manifest)


def tuned_run_row(run_dir: str | Path, manifest: Path) -> dict:
    """The Hyperband row from a finished, evaluated run directory tuned on the same split manifest."""
    from training.data import manifest_hash
    from training.rundir import RunDir

    run = RunDir(run_dir)
    summary = run.read_tune_summary()
    report_path = run.report
    if not report_path.exists():
        raise UserError(f"{report_path} does not exist; evaluate the run first (glasses-train evaluate --run-dir)")
    if summary["manifest_hash"] != manifest_hash(manifest):
        raise UserError(f"{run_dir} was tuned on another split manifest than {manifest}")
    report = json.loads(report_path.read_text())
    history = run.read_history()
    return {"name": "hyperband", "params": report["params"], "epochs": len(history.get("loss", [])),
            "seconds": summary.get("trials_time_total_s", 0.0) + summary.get("final_fit_wall_time_s", 0.0),
            "metrics": report["metrics"], "report": str(report_path),
            "hyperparameters": summary.get("best_hyperparameters")}


def add_cli(subparsers) -> None:
    """`glasses-train experiments --source SRC [--profile P] [--epochs N]`."""
    p = subparsers.add_parser("experiments", help="the paper's ladder + Hyperband, markdown table vs the paper")
    p.add_argument("--source", required=True, help="kaggle | kaggle-dir:PATH | folders:PATH")
    p.add_argument("--profile", default="paper", choices=sorted(TUNING_PROFILES),
                   help="Hyperband profile; its max_epochs is the ladder's default epochs")
    p.add_argument("--epochs", type=int, default=None, help="epochs per ladder model (default: profile max_epochs)")
    p.add_argument("--size", type=int, default=None, help="image side (default: the profile's)")
    p.add_argument("--models", default=None, help="comma-separated subset of the ladder")
    p.add_argument("--fresh", action="store_true", help="restart the Hyperband search")
    p.add_argument("--tuned-run", type=Path, default=None,
                   help="run directory of a finished `glasses-train run` on the same data: its evaluated model "
                        "is the Hyperband row (no search, no refit)")
    p.add_argument("--no-hyperband", action="store_true", help="the ladder only (add the Hyperband row later "
                   "with the same --out and --tuned-run)")
    p.add_argument("--work-dir", type=Path, default=WORK_DIR)
    p.add_argument("--out", type=Path, default=None, help="results directory (ladder models found there are reused)")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    ladder = tuple(m.strip() for m in args.models.split(",")) if args.models else None
    experiments(args.source, profile=args.profile, epochs=args.epochs, size=args.size, work_dir=args.work_dir,
                out_dir=args.out, ladder=ladder, fresh=args.fresh,
                tuned_run=args.tuned_run, hyperband=not args.no_hyperband)
    return 0

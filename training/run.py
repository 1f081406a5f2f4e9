"""Run: the whole offline pipeline in one command: prepare -> tune -> evaluate -> register (+ promote)
[-> frame: the face-framed copy, training/framing.py].

    glasses-train run --source folders:../shared/data/celeba-glasses --profile smoke [--exclude FILE ...]
                      [--serve-framing face]

prints where every artefact went (cache + manifest, tuner project, run directory with model,
report and learning curves, registry tag). A distributed search runs the same command everywhere
(see training/tune.py); workers stop after their trials, the chief evaluates and registers.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING
from pathlib import Path

from glasses.config import TUNING_PROFILES, WORK_DIR
from training.cli import UserError

if TYPE_CHECKING:
    from training.prepare import PreparedData


def run(
    source: str | list[str],
    profile: str = "paper",
    *,
    size: int | None = None,
    fresh: bool = False, force: bool = False, promote: bool = True,
    work_dir: str | Path = WORK_DIR, scheduler: str | None = None, exclude_files: list = (),
    serve_framing: str = "none",
) -> dict:
    """prepare -> tune -> evaluate -> register [-> frame]; returns {stage: artefact} (paths, tag, metrics).
    `exclude_files` go to prepare (photo ids left out; their sha256s reach the manifest and lineage);
    `serve_framing="face"` also registers the face-framed copy (training/framing.py), promoted in its place."""
    from glasses import registry
    from training.evaluate import evaluate_run, format_metrics
    from training.register import register
    from training.tune import get_profile, tune

    work_dir = Path(work_dir)
    config = get_profile(profile)
    size = size or config.image_size
    started = time.monotonic()
    out: dict = {"profile": profile}
    data = _prepare(source, size, scheduler, work_dir, exclude_files, config.framing)
    out["manifest"] = str(data.manifest_path)

    print(f"== tune (profile {profile})", flush=True)
    result = tune(data.manifest_path, config, fresh=fresh, work_dir=work_dir)
    out["tuner_dir"] = str(result.project_dir)
    if result.role == "worker":
        print(f"   worker finished its trials; the chief evaluates and registers ({time.monotonic() - started:.0f}s)")
        return out
    out["run_dir"] = str(result.run_dir)
    out["model"] = str(result.model_path)

    print("== evaluate (test split)", flush=True)
    # with serve_framing "face" the framed copy is what gets measured per condition (frame stage)
    report = evaluate_run(result.run_dir, robust=serve_framing == "none")
    print(f"   {format_metrics(report['metrics'])}", flush=True)
    print(f"   threshold {report['threshold']['value']:.4f}: {report['threshold']['method']}", flush=True)
    out["report"] = report.get("report_path")
    out["learning_curves"] = report.get("learning_curves")
    out["metrics"] = report["metrics"]

    print("== register", flush=True)
    try:
        reg = register(result.run_dir, force=force, promote=promote)
    except UserError:
        _print_artefacts(out, started)
        raise
    out["tag"] = reg.tag
    out["promoted"] = reg.promoted
    out["store"] = str(registry.bentoml_home())
    print(f"   {reg.gate.reason}{' (FORCED)' if reg.forced else ''}", flush=True)
    if serve_framing == "face":
        _frame(out, result.run_dir)
    _print_artefacts(out, started)
    return out


def _frame(out: dict, run_dir: Path) -> None:
    """The frame stage: the registered version's face-framed copy (promoted if the version was)."""
    from training.framing import frame_version, summary

    print("== frame (serve photos cropped to the training framing around the face)", flush=True)
    out["unframed_tag"] = out["tag"]
    out["tag"], measured = frame_version(out["tag"], out["manifest"], Path(run_dir) / "framing")
    print(f"   {summary(measured)}", flush=True)


def _prepare(source: str | list[str], size: int, scheduler: str | None, work_dir: Path, exclude_files,
             framing: str = "none") -> "PreparedData":
    """The prepare stage: builds or reuses the split manifest and prints what it holds and left out."""
    from training.prepare import prepare_sources

    sources = [source] if isinstance(source, str) else list(source)
    print(f"== prepare {' + '.join(sources)} ({size}px{', framed around faces' if framing == 'face' else ''})", flush=True)
    data = prepare_sources(sources, size=size, scheduler=scheduler, work_dir=work_dir,
                           exclude_files=list(exclude_files), framing=framing)
    counts = {split: sum(c.values()) for split, c in data.counts.items()}
    print(f"   manifest {data.manifest_path} ({'reused' if data.reused else 'built'}; {counts}; "
          f"{len(data.skipped)} skipped)", flush=True)
    for record in data.exclusions:
        what = "the paper's list" if record.get("shipped") else record["file"]
        removed = ", ".join(f"{c} {n}" for c, n in record["removed"].items())
        print(f"   excluded by {what} (sha256 {record['sha256'][:12]}): {removed}", flush=True)
    for note in data.notes:
        print(f"   note: {note}", flush=True)
    if framing == "face":
        unframed = json.loads(Path(data.manifest_path).read_text()).get("unframed", [])
        print(f"   framed around faces; no face found in {len(unframed)} photos (kept unframed)", flush=True)
    return data


def _print_artefacts(out: dict, started: float) -> None:
    print("== artefacts")
    for key in ("manifest", "tuner_dir", "run_dir", "model", "report", "learning_curves", "store", "unframed_tag",
                "tag"):
        if out.get(key):
            print(f"   {key:<16} {out[key]}")
    if "promoted" in out:
        print(f"   {'promoted':<16} {'yes' if out['promoted'] else 'no'}")
    print(f"   {'wall time':<16} {time.monotonic() - started:.1f}s", flush=True)


def add_cli(subparsers) -> None:
    """`glasses-train run --source SRC [--profile P] [--exclude FILE ...] [--fresh] [--force] [--no-promote]`."""
    p = subparsers.add_parser("run", help="prepare -> tune -> evaluate -> register, in one command")
    p.add_argument("--source", required=True, action="append",
                   help="kaggle | kaggle-dir:PATH | folders:PATH; repeat for several (their union, split by person)")
    p.add_argument("--profile", default="paper", choices=sorted(TUNING_PROFILES))
    p.add_argument("--size", type=int, default=None, help="image side (default: the profile's)")
    p.add_argument("--exclude", action="append", default=[], metavar="FILE",
                   help="leave out the photo ids listed in FILE (repeatable; passed to prepare, see prepare --help)")
    p.add_argument("--fresh", action="store_true", help="restart the search instead of resuming it")
    p.add_argument("--force", action="store_true", help="register even if the quality gate refuses")
    p.add_argument("--no-promote", action="store_true", help="register without promoting")
    p.add_argument("--work-dir", type=Path, default=WORK_DIR)
    p.add_argument("--scheduler", default=None, help="dask scheduler for prepare (see prepare --help)")
    p.add_argument("--serve-framing", choices=("none", "face"), default="none",
                   help="face: also register (and promote in its place) the copy that serves photos cropped to "
                        "the training framing around the face, as `glasses-train frame` does")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    for path in args.exclude:  # before anything heavy is imported
        if not Path(path).expanduser().is_file():
            raise UserError(f"exclusion file not found: {Path(path).expanduser().resolve()}")
    run(args.source, args.profile, size=args.size, fresh=args.fresh, force=args.force,
        promote=not args.no_promote, work_dir=args.work_dir, scheduler=args.scheduler, exclude_files=args.exclude,
        serve_framing=args.serve_framing)
    return 0

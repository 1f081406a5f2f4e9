"""Review: model-assisted label review, the paper's second cleaning route, and its exclusion files.

    --source SRC [--source SRC2 ...] --out DIR [--folds K]
      -> every readable photo of every source (prepare's cache, no exclusion list applied: all are scored)
      -> features of a trained classifier (training/features.py; default: the bundled model)
      -> K folds grouped by person (sklearn StratifiedGroupKFold): for each fold a StandardScaler +
         LogisticRegression is fitted on the other folds' photos and scores this fold's photos, so a
         photo is never scored by a classifier that saw its person -> out-of-fold P(glasses)
      -> cleanlab: label quality score (rank 1 = lowest = most suspect) and find_label_issues flags
      -> DIR/review.csv (every photo), DIR/review.json (summary; Kaggle sources also precision and
         recall of the top suspects against the paper's 523), DIR/suspects.png + DIR/index.html
    --apply DIR [--top N | --ids FILE]
      -> an exclusion file (one photo id per line) for `glasses-train prepare --exclude FILE`
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from glasses.config import (
    BUNDLED_MODEL_FILE,
    CLASS_NAMES,
    EXCLUDED_IDS_FILE,
    REVIEW_C,
    REVIEW_FOLDS,
    REVIEW_SHEET_TOP,
    SEED,
    WORK_DIR,
)
from glasses.files import UserError, file_sha256, write_json_atomic
from training.exclusions import KAGGLE_KINDS, read_exclusion_file

CSV_COLUMNS = ("file", "given_label", "p_glasses", "rank", "id", "source", "person", "fold",
               "label_quality", "issue")
EXCLUSION_FILE = "exclude.txt"


@dataclass
class Photos:
    """Every readable photo of the reviewed sources, in source order."""

    images: np.ndarray  # uint8 (N, S, S, 3), prepare's cache rows
    labels: np.ndarray  # int64 (N,), 1 = glasses
    ids: list[str]  # prepare's ids: Kaggle id or the file relative to its folders root
    files: list[str]
    persons: list[str]  # the group a photo belongs to (a photo alone when its source has none)
    sources: list[str]
    roots: list[str]
    kinds: list[str]
    manifests: dict[str, str] = field(default_factory=dict)  # source -> manifest path


def load_photos(sources: list[str], *, work_dir: Path = WORK_DIR, seed: int = SEED) -> Photos:
    """prepare() each source without exclusions and collect all its readable photos (every split)."""
    from training.data import read_manifest
    from training.prepare import prepare

    parts, out = [], Photos(np.zeros(0), np.zeros(0), [], [], [], [], [], [])
    for source in sources:
        prepared = prepare(source, exclude=False, work_dir=work_dir, seed=seed, progress=False)
        manifest = read_manifest(prepared.manifest_path)
        rows = sorted((i, split, k) for split, entry in manifest["splits"].items()
                      for k, i in enumerate(entry["indices"]))
        cache = np.load(manifest["cache"]["images"], mmap_mode="r")
        parts.append(np.ascontiguousarray(cache[[i for i, _, _ in rows]]))
        labels = []
        for _, split, k in rows:
            entry = manifest["splits"][split]
            labels.append(entry["labels"][k])
            out.ids.append(str(entry["ids"][k]))
            out.files.append(entry["files"][k])
            groups = entry.get("groups")
            out.persons.append(str(groups[k]) if groups else f"{manifest['source']}#{entry['ids'][k]}")
        out.labels = np.concatenate([out.labels, np.asarray(labels)]).astype(np.int64)
        out.sources += [manifest["source"]] * len(rows)
        out.roots += [manifest["root"]] * len(rows)
        out.kinds += [manifest["kind"]] * len(rows)
        out.manifests[manifest["source"]] = str(prepared.manifest_path)
    out.images = np.concatenate(parts)
    return out


def person_folds(labels: np.ndarray, persons: list[str], k: int, *, seed: int = SEED) -> np.ndarray:
    """Fold index per photo: StratifiedGroupKFold by person (each person in exactly one fold)."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_persons = len(set(persons))
    if n_persons < k:
        raise UserError(f"--folds {k} needs at least {k} persons; the sources have {n_persons}")
    for c, name in enumerate(CLASS_NAMES):
        if int((labels == c).sum()) < k:
            raise UserError(f"--folds {k} needs at least {k} {name} photos; the sources have {int((labels == c).sum())}")
    fold = np.full(len(labels), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for f, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, np.asarray(persons))):
        fold[test] = f
    return fold


def out_of_fold(features: np.ndarray, labels: np.ndarray, fold: np.ndarray, *, c: float = REVIEW_C) -> np.ndarray:
    """P(glasses) of every photo from a StandardScaler + LogisticRegression fitted on the other folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    p = np.zeros(len(labels), dtype=np.float64)
    for f in np.unique(fold):
        train = fold != f
        if len(np.unique(labels[train])) < 2:
            raise UserError(f"fold {f}: the other folds hold one class only; use fewer --folds")
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        clf.fit(features[train], labels[train])
        p[~train] = clf.predict_proba(features[~train])[:, 1]
    return p


def rank_labels(labels: np.ndarray, p_glasses: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rank, quality, issue) per photo from cleanlab: rank 1 = lowest label quality score."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    pred_probs = np.column_stack([1.0 - p_glasses, p_glasses])
    quality = get_label_quality_scores(labels, pred_probs, method="self_confidence")
    issue = find_label_issues(labels, pred_probs, filter_by="prune_by_noise_rate")
    order = np.lexsort((np.arange(len(labels)), quality))  # ties: source order
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(1, len(labels) + 1)
    return rank, quality, np.asarray(issue, dtype=bool)


def kaggle_overlap(photos: Photos, rank: np.ndarray, issue: np.ndarray,
                   listed_path: Path = EXCLUDED_IDS_FILE) -> dict | None:
    """Precision and recall of the top suspects among Kaggle photos against the paper's removed ids."""
    from training.sources import load_excluded_ids

    kaggle = np.flatnonzero([k in KAGGLE_KINDS for k in photos.kinds])
    if not len(kaggle):
        return None
    listed = load_excluded_ids(listed_path)
    in_list = np.asarray([photos.ids[i] in listed for i in kaggle])
    order = kaggle[np.argsort(rank[kaggle], kind="stable")]
    hits_in_order = np.asarray([photos.ids[i] in listed for i in order])
    n_listed = int(in_list.sum())
    result = {"list": str(listed_path), "list_ids": len(listed), "photos": int(len(kaggle)),
              "listed_photos_present": n_listed, "at": {}}
    for name, k in (("flagged", int(issue[kaggle].sum())), ("list_size", n_listed)):
        hits = int(hits_in_order[:k].sum())
        result["at"][name] = {"k": k, "hits": hits, "precision": hits / k if k else None,
                              "recall": hits / n_listed if n_listed else None}
    return result


def review_rows(photos: Photos, p: np.ndarray, rank: np.ndarray, quality: np.ndarray,
                issue: np.ndarray, fold: np.ndarray) -> list[dict]:
    """One dict per photo (CSV_COLUMNS + root), in rank order."""
    rows = [{"file": photos.files[i], "given_label": CLASS_NAMES[photos.labels[i]], "p_glasses": f"{p[i]:.6f}",
             "rank": int(rank[i]), "id": photos.ids[i], "source": photos.sources[i], "person": photos.persons[i],
             "fold": int(fold[i]), "label_quality": f"{quality[i]:.6f}", "issue": int(issue[i]),
             "root": photos.roots[i]} for i in range(len(photos.ids))]
    return sorted(rows, key=lambda r: r["rank"])


def write_csv(rows: list[dict], path: Path) -> Path:
    """DIR/review.csv: CSV_COLUMNS, one row per photo, rank order."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def review(sources: list[str], out: Path, *, folds: int = REVIEW_FOLDS, model: str | Path = BUNDLED_MODEL_FILE,
           work_dir: Path = WORK_DIR, seed: int = SEED, sheet_top: int = REVIEW_SHEET_TOP, c: float = REVIEW_C) -> dict:
    """The whole review (see the module docstring); returns the summary also written to DIR/review.json."""
    from training.contact_sheet import write_page, write_sheet
    from training.features import feature_extractor, load_classifier

    t0 = time.perf_counter()
    timings = {}
    photos = load_photos(sources, work_dir=work_dir, seed=seed)
    timings["prepare_s"] = time.perf_counter() - t0
    fold = person_folds(photos.labels, photos.persons, folds, seed=seed)
    t = time.perf_counter()
    features = feature_extractor(load_classifier(model))(photos.images)
    timings["features_s"] = time.perf_counter() - t
    t = time.perf_counter()
    p = out_of_fold(features, photos.labels, fold, c=c)
    timings["folds_s"] = time.perf_counter() - t
    t = time.perf_counter()
    rank, quality, issue = rank_labels(photos.labels, p)
    timings["cleanlab_s"] = time.perf_counter() - t
    out.mkdir(parents=True, exist_ok=True)
    rows = review_rows(photos, p, rank, quality, issue, fold)
    write_csv(rows, out / "review.csv")
    top = rows[:sheet_top]
    write_sheet(top, out / "suspects.png")
    write_page(top, out, title=f"Label review: top {len(top)} of {len(rows)} photos", sheet_name="suspects.png")
    timings["total_s"] = time.perf_counter() - t0
    summary = {
        "sources": sources, "manifests": photos.manifests, "photos": len(rows),
        "per_class": {n: int((photos.labels == i).sum()) for i, n in enumerate(CLASS_NAMES)},
        "persons": len(set(photos.persons)), "folds": folds, "seed": seed, "logistic_regression_c": c,
        "model": str(model), "model_sha256": file_sha256(model) if Path(model).is_file() else None,
        "features": int(features.shape[1]),
        "flagged": {n: int((issue & (photos.labels == i)).sum()) for i, n in enumerate(CLASS_NAMES)},
        "kaggle_overlap": kaggle_overlap(photos, rank, issue), "timings": timings,
        "outputs": {"csv": str(out / "review.csv"), "sheet": str(out / "suspects.png"), "page": str(out / "index.html")},
    }
    write_json_atomic(out / "review.json", summary, indent=1)
    return summary


# --- exclusion files ----------------------------------------------------------------------------
def read_review(out: Path) -> list[dict]:
    """The rows of DIR/review.csv (rank order), checked for the columns --apply needs."""
    path = Path(out) / "review.csv"
    if not path.is_file():
        raise UserError(f"{path} not found (run `glasses-train review --out {out}` first)")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    missing = [c for c in ("id", "rank", "issue", "given_label", "p_glasses", "source") if rows and c not in rows[0]]
    if not rows or missing:
        raise UserError(f"{path} is not a review table (missing columns: {', '.join(missing) or 'all rows'})")
    return sorted(rows, key=lambda r: int(r["rank"]))


def choose(rows: list[dict], *, top: int | None = None, ids_file: Path | None = None) -> tuple[list[dict], str]:
    """The rows to exclude and how they were chosen: the top N, the listed ids (or files), else cleanlab's flags."""
    if top is not None:
        return rows[:top], f"top {top} of the ranking"
    if ids_file is not None:
        wanted = sorted(read_exclusion_file(ids_file).ids)
        by_key = {}
        for r in rows:
            by_key.setdefault(r["id"], r)
            by_key.setdefault(r["file"], r)
        unknown = [i for i in wanted if i not in by_key]
        if unknown:
            raise UserError(f"{ids_file}: {len(unknown)} ids are not in the review (first: {unknown[0]!r})")
        chosen = list({id(by_key[i]): by_key[i] for i in wanted}.values())
        return sorted(chosen, key=lambda r: int(r["rank"])), f"ids listed in {ids_file}"
    return [r for r in rows if r["issue"] in ("1", "True")], "flagged by cleanlab find_label_issues"


def apply(out: Path, *, top: int | None = None, ids_file: Path | None = None,
          exclusions: Path | None = None) -> tuple[Path, list[dict]]:
    """Write the exclusion file (default DIR/exclude.txt) for the chosen rows; returns (path, rows)."""
    rows = read_review(out)
    chosen, how = choose(rows, top=top, ids_file=ids_file)
    path = Path(exclusions) if exclusions else Path(out) / EXCLUSION_FILE
    lines = [f"# glasses-train review exclusions: {len(chosen)} photos, {how}, from {Path(out).resolve() / 'review.csv'}",
             "# one photo id per line (Kaggle id, or the file relative to its folders: root); '#' starts a comment"]
    lines += [f"{r['id']}  # rank {r['rank']}, given {r['given_label']}, P(glasses) {float(r['p_glasses']):.3f}, "
              f"{r['source']}" for r in chosen]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path, chosen


# --- the command --------------------------------------------------------------------------------
def check_args(args: argparse.Namespace) -> None:
    """Every argument error as one line, before anything heavy (TensorFlow) is imported."""
    from training.sources import parse_source

    if (args.apply is None) == (args.out is None):
        raise UserError("give either --source SRC ... --out DIR (review) or --apply DIR (exclusion file)")
    if args.apply is not None:
        if args.source:
            raise UserError("--apply takes no --source (it reads DIR/review.csv)")
        if args.top is not None and args.ids is not None:
            raise UserError("give --top N or --ids FILE, not both")
        if args.top is not None and args.top < 1:
            raise UserError(f"--top must be at least 1, got {args.top}")
        if args.ids is not None and not args.ids.is_file():
            raise UserError(f"ids file not found: {args.ids}")
        return
    if args.top is not None or args.ids is not None:
        raise UserError("--top and --ids go with --apply DIR")
    if not args.source:
        raise UserError("--source SRC is required (repeat it to review several sources together)")
    if args.folds < 2:
        raise UserError(f"--folds must be at least 2, got {args.folds}")
    for source in args.source:
        kind, path = parse_source(source)
        if path and not Path(path).expanduser().exists():
            raise UserError(f"source path not found: {Path(path).expanduser().resolve()}")
    if args.model is not None and Path(args.model).suffix in (".bentomodel", ".keras") and not Path(args.model).is_file():
        raise UserError(f"model file not found: {args.model}")


def _print_review(summary: dict, rows_path: Path, shown: int = 10) -> None:
    with open(rows_path, newline="") as fh:
        top = [r for _, r in zip(range(shown), csv.DictReader(fh))]
    per = ", ".join(f"{n} {summary['per_class'][n]}" for n in CLASS_NAMES)
    flagged = ", ".join(f"{n} {summary['flagged'][n]}" for n in CLASS_NAMES)
    print(f"photos: {summary['photos']} ({per}), persons: {summary['persons']}, folds: {summary['folds']}")
    print(f"cleanlab find_label_issues flagged: {flagged}")
    for r in top:
        print(f"  #{r['rank']:>4} given {r['given_label']:<10} P(glasses) {float(r['p_glasses']):.3f}  {r['id']}")
    overlap = summary.get("kaggle_overlap")
    if overlap:
        for name, m in overlap["at"].items():
            prec = "n/a" if m["precision"] is None else f"{m['precision']:.3f}"
            rec = "n/a" if m["recall"] is None else f"{m['recall']:.3f}"
            print(f"paper's list ({overlap['listed_photos_present']} of its ids present): top {m['k']} ({name}) "
                  f"-> {m['hits']} listed, precision {prec}, recall {rec}")
    times = ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in summary["timings"].items())
    print(f"time: {times}")
    for name, path in summary["outputs"].items():
        print(f"{name}: {path}")


def _run(args: argparse.Namespace) -> int:
    check_args(args)
    if args.apply is not None:
        path, chosen = apply(Path(args.apply), top=args.top, ids_file=args.ids, exclusions=args.exclusions)
        per = {n: sum(r["given_label"] == n for r in chosen) for n in CLASS_NAMES}
        print(f"exclusion file: {path} ({len(chosen)} photos: " + ", ".join(f"{n} {per[n]}" for n in CLASS_NAMES) + ")")
        print(f"use it with: glasses-train prepare --source SRC --exclude {path}")
        return 0


    summary = review(args.source, Path(args.out), folds=args.folds, model=args.model or BUNDLED_MODEL_FILE,
                     work_dir=Path(args.work_dir), seed=args.seed, sheet_top=args.sheet_top)
    _print_review(summary, Path(args.out) / "review.csv")
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register `glasses-train review`."""
    p = subparsers.add_parser("review", help="rank likely label errors (out-of-fold P(glasses) + cleanlab); --apply writes an exclusion file")
    p.add_argument("--source", action="append", default=[], help="kaggle | kaggle-dir:PATH | folders:PATH (repeatable)")
    p.add_argument("--out", default=None, help="output directory: review.csv, review.json, suspects.png, index.html")
    p.add_argument("--folds", type=int, default=REVIEW_FOLDS, help="folds grouped by person (default %(default)s)")
    p.add_argument("--model", default=None, help=f"feature extractor: .bentomodel, .keras or registry tag (default {BUNDLED_MODEL_FILE.name})")
    p.add_argument("--sheet-top", type=int, default=REVIEW_SHEET_TOP, help="suspects on the contact sheet (default %(default)s)")
    p.add_argument("--apply", default=None, metavar="DIR", help="write an exclusion file from DIR/review.csv")
    p.add_argument("--top", type=int, default=None, help="with --apply: exclude the N most suspect photos")
    p.add_argument("--ids", type=Path, default=None, help="with --apply: exclude the ids (or files) listed in FILE")
    p.add_argument("--exclusions", type=Path, default=None, help=f"with --apply: where to write (default DIR/{EXCLUSION_FILE})")
    p.add_argument("--work-dir", default=str(WORK_DIR), help="where prepare's caches go (default %(default)s)")
    p.add_argument("--seed", type=int, default=SEED, help="fold seed and prepare's split seed (default %(default)s)")
    p.set_defaults(func=_run)

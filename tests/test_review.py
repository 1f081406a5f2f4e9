"""review: out-of-fold P(glasses) grouped by person, cleanlab ranking, contact sheet, --apply, and
the overlap with the paper's Kaggle list, on generated photos with planted label errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from glasses.files import UserError
from training.cli import main as cli_main
from training.review import out_of_fold, person_folds, review

from _fixtures import EXCLUDED_SAMPLE, flip_folder_labels, make_folders, make_kaggle_dir

REPO = Path(__file__).resolve().parent.parent
# planted label errors: three glasses photos filed as no_glasses, three the other way round
PLANTED = ["glasses/glasses-0001.jpg", "glasses/glasses-0007.tif", "glasses/glasses-0013.bmp",
           "no_glasses/no_glasses-0002.png", "no_glasses/no_glasses-0009.jpg", "no_glasses/no_glasses-0021.bmp"]


def _rows(out: Path) -> list[dict]:
    with open(out / "review.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory) -> dict:
    """A folders source of 100 photos of 20 persons with 6 planted flips, reviewed once (4 folds)."""
    base = tmp_path_factory.mktemp("review")
    root = make_folders(base / "photos", n_glasses=40, n_no_glasses=60, persons=20, image_size=96)
    planted = flip_folder_labels(root, PLANTED)
    out, work = base / "out", base / "work"
    rc = cli_main(["review", "--source", f"folders:{root}", "--out", str(out), "--folds", "4",
                   "--work-dir", str(work), "--sheet-top", "12"])
    assert rc == 0
    return {"root": root, "planted": planted, "out": out, "work": work, "rows": _rows(out)}


def test_planted_flips_rank_at_the_top(reviewed):
    ranks = {r["file"]: int(r["rank"]) for r in reviewed["rows"]}
    planted_ranks = sorted(ranks[f] for f in reviewed["planted"])
    assert planted_ranks[-1] <= len(PLANTED) + 2, planted_ranks  # all six among the top eight
    flagged = {r["file"] for r in reviewed["rows"] if r["issue"] == "1"}
    assert len(flagged & set(reviewed["planted"])) >= 5
    summary = json.loads((reviewed["out"] / "review.json").read_text())
    assert sum(summary["flagged"].values()) == len(flagged)


def test_csv_has_every_photo_once(reviewed):
    rows, root = reviewed["rows"], reviewed["root"]
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != "labels.csv"}
    assert list(rows[0])[:4] == ["file", "given_label", "p_glasses", "rank"]
    assert sorted(r["file"] for r in rows) == sorted(on_disk) and len(rows) == 100
    assert sorted(int(r["rank"]) for r in rows) == list(range(1, 101))
    assert all(0.0 <= float(r["p_glasses"]) <= 1.0 for r in rows)
    assert all(r["given_label"] == ("glasses" if r["file"].startswith("glasses/") else "no_glasses") for r in rows)


def test_every_person_in_one_fold(reviewed):
    folds_of: dict[str, set] = {}
    for r in reviewed["rows"]:
        folds_of.setdefault(r["person"], set()).add(r["fold"])
    assert len(folds_of) == 20 and all(len(f) == 1 for f in folds_of.values())
    assert {r["fold"] for r in reviewed["rows"]} == {"0", "1", "2", "3"}


def test_grouped_folds_never_learn_the_person():
    """Features that only identify the person, labels that only depend on the person: a classifier
    that saw the person would score its photos perfectly; grouped out-of-fold ones cannot."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    persons = np.repeat(np.arange(40), 6)
    person_label = rng.permutation(np.r_[np.ones(20), np.zeros(20)]).astype(np.int64)
    labels = person_label[persons]
    features = np.eye(40)[persons] + rng.normal(scale=0.01, size=(len(persons), 40))
    fold = person_folds(labels, [str(p) for p in persons], 5)
    for p in np.unique(persons):
        assert len(np.unique(fold[persons == p])) == 1
    grouped = roc_auc_score(labels, out_of_fold(features, labels, fold))
    leaky = roc_auc_score(labels, out_of_fold(features, labels, np.arange(len(labels)) % 5))
    assert grouped < 0.75 < 0.95 < leaky


def test_contact_sheet_and_page(reviewed):
    from PIL import Image

    out, rows = reviewed["out"], reviewed["rows"]
    with Image.open(out / "suspects.png") as sheet:
        assert sheet.width > 160 * 10 and sheet.height > 160 * 2  # 12 tiles: 10 + 2 in two rows
    page = (out / "index.html").read_text()
    assert page.count("<tr><td>") == 12
    for r in rows[:12]:
        assert f"suspects/{int(r['rank']):05d}.jpg" in page and f"{float(r['p_glasses']):.3f}" in page
        assert (out / "suspects" / f"{int(r['rank']):05d}.jpg").is_file()


def test_apply_top_and_ids(reviewed, tmp_path):
    out = reviewed["out"]
    assert cli_main(["review", "--apply", str(out), "--top", "6"]) == 0
    lines = [ln.split("#")[0].strip() for ln in (out / "exclude.txt").read_text().splitlines()]
    assert [ln for ln in lines if ln] == [r["id"] for r in reviewed["rows"][:6]]
    ids = tmp_path / "confirmed.txt"
    ids.write_text(f"# confirmed by eye\n{reviewed['planted'][0]}\n{reviewed['planted'][3]}  # looks wrong\n")
    target = tmp_path / "mine.txt"
    assert cli_main(["review", "--apply", str(out), "--ids", str(ids), "--exclusions", str(target)]) == 0
    kept = [ln.split("#")[0].strip() for ln in target.read_text().splitlines()]
    assert sorted(k for k in kept if k) == sorted([reviewed["planted"][0], reviewed["planted"][3]])


def test_kaggle_overlap_with_the_papers_list(tmp_path):
    """Kaggle layout whose five listed ids are really mislabelled: the review finds them in the list."""
    root = make_kaggle_dir(tmp_path / "kaggle", n_train=45, mislabelled_ids=EXCLUDED_SAMPLE)
    out = tmp_path / "out"
    assert cli_main(["review", "--source", f"kaggle-dir:{root}", "--out", str(out), "--folds", "3",
                     "--work-dir", str(tmp_path / "work"), "--sheet-top", "5"]) == 0
    overlap = json.loads((out / "review.json").read_text())["kaggle_overlap"]
    assert overlap["listed_photos_present"] == len(EXCLUDED_SAMPLE) and overlap["photos"] == 45 + 2
    at = overlap["at"]["list_size"]
    assert at["k"] == 5 and at["hits"] >= 4 and at["recall"] == at["hits"] / 5 == at["precision"]
    rows = _rows(out)
    assert len(rows) == 47 and {str(i) for i in EXCLUDED_SAMPLE} <= {r["id"] for r in rows}


@pytest.mark.parametrize("args, says", [
    (["--source", "folders:/no/such/dir", "--out", "x"], "source path not found"),
    (["--source", "bogus:x", "--out", "x"], "unknown source"),
    (["--out", "x"], "--source SRC is required"),
    (["--source", "folders:.", "--out", "x", "--folds", "1"], "--folds must be at least 2"),
    (["--apply", "/no/such/review"], "review.csv not found"),
    (["--apply", "x", "--top", "3", "--ids", "f"], "not both"),
    (["--source", "folders:.", "--out", "x", "--model", "/no/model.bentomodel"], "model file not found"),
])
def test_cli_errors_are_one_line_before_tensorflow(args, says):
    script = ("import sys; from training.cli import main; rc = main(sys.argv[1:]); "
              "print('tensorflow' in sys.modules, file=sys.stdout); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", script, "review", *args], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("glasses-train review: error:") and says in lines[0], r.stderr
    assert r.stdout.strip() == "False"


def test_too_few_persons_for_the_folds(tmp_path):
    root = make_folders(tmp_path / "photos", n_glasses=16, n_no_glasses=16, persons=8)
    with pytest.raises(UserError, match="needs at least 10 persons; the sources have 8"):
        review([f"folders:{root}"], tmp_path / "out", folds=10, work_dir=tmp_path / "work")

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
from _training import private_store, write_run_dir

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


def _split_files(manifest: dict) -> list[str]:
    return [f for entry in manifest["splits"].values() for f in entry["files"]]


def test_apply_then_prepare_exclude_round_trip(reviewed, tmp_path):
    """--apply --top 6 -> prepare --exclude: the six are gone from every split, counted per class, and
    the file's sha256 is in the manifest; a second file adds its own record."""
    from glasses.files import file_sha256
    from training.data import read_manifest
    from training.prepare import prepare

    out, root = reviewed["out"], reviewed["root"]
    assert cli_main(["review", "--apply", str(out), "--top", "6", "--exclusions", str(tmp_path / "top6.txt")]) == 0
    top6 = reviewed["rows"][:6]
    last = reviewed["rows"][-1]  # the least suspect photo, written as ./<file>
    extra = tmp_path / "extra.txt"
    extra.write_text(f"# one more\n./{last['file']}\n")
    p = prepare(f"folders:{root}", size=64, work_dir=tmp_path / "work", progress=False,
                exclude_files=[tmp_path / "top6.txt", extra])
    manifest = read_manifest(p.manifest_path)
    kept = _split_files(manifest)
    assert len(kept) == 100 - 7 and not {r["file"] for r in top6 + [last]} & set(kept)
    want = {c: sum(r["given_label"] == c for r in top6) for c in ("no_glasses", "glasses")}
    first, second = manifest["exclusions"]
    assert first["sha256"] == file_sha256(tmp_path / "top6.txt") and first["removed"] == want and first["listed"] == 6
    assert second["sha256"] == file_sha256(extra) and sum(second["removed"].values()) == second["removed"][last["given_label"]] == 1
    want[last["given_label"]] += 1
    assert p.excluded == want
    assert sum(sum(c.values()) for c in manifest["counts"].values()) == 93
    plain = prepare(f"folders:{root}", size=64, work_dir=tmp_path / "work", progress=False)
    assert plain.fingerprint != p.fingerprint and len(_split_files(read_manifest(plain.manifest_path))) == 100


def test_exclusions_reach_the_registry_metadata(reviewed, tmp_path):
    import keras

    from glasses.files import file_sha256
    from training.prepare import prepare
    from training.register import register

    ids = tmp_path / "confirmed.txt"
    ids.write_text(reviewed["planted"][0] + "\n")
    manifest = prepare(f"folders:{reviewed['root']}", size=64, work_dir=tmp_path / "work", progress=False,
                       exclude_files=[ids]).manifest_path
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    run = write_run_dir(tmp_path / "run", model, manifest, metrics={"roc_auc": 0.9})
    with private_store(tmp_path / "bentoml"):
        import bentoml

        result = register(run, force=True)
        meta = bentoml.models.get(result.tag).info.metadata
    (record,) = meta["data_exclusions"]
    assert record["sha256"] == file_sha256(ids) and record["file"] == str(ids.resolve())
    assert sum(record["removed"].values()) == 1


def test_kaggle_default_list_plus_a_file(tmp_path):
    from training.prepare import prepare

    root = make_kaggle_dir(tmp_path / "kaggle", n_train=24)
    extra = tmp_path / "more.txt"
    extra.write_text("3\n0004  # leading zeros are the same id\n")
    p = prepare(f"kaggle-dir:{root}", size=64, work_dir=tmp_path / "work", progress=False, exclude_files=[extra])
    shipped, mine = p.exclusions
    assert shipped["shipped"] and sum(shipped["removed"].values()) == len(EXCLUDED_SAMPLE)
    assert not mine["shipped"] and mine["removed"] == {"no_glasses": 1, "glasses": 1}  # id 3 is glasses
    assert sum(p.excluded.values()) == len(EXCLUDED_SAMPLE) + 2
    only_mine = prepare(f"kaggle-dir:{root}", size=64, work_dir=tmp_path / "work", progress=False,
                        exclude=False, exclude_files=[extra])
    assert [r["shipped"] for r in only_mine.exclusions] == [False] and sum(only_mine.excluded.values()) == 2


def test_prepare_exclude_missing_file_is_one_line(tmp_path):
    root = make_folders(tmp_path / "photos", n_glasses=4, n_no_glasses=4, persons=None)
    r = subprocess.run([sys.executable, "-m", "training", "prepare", "--source", f"folders:{root}",
                        "--exclude", str(tmp_path / "nope.txt"), "--work-dir", str(tmp_path / "w")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"glasses-train prepare: error: exclusion file not found: {tmp_path / 'nope.txt'}"]


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


@pytest.mark.parametrize("standardize", [False, True])
def test_features_go_through_the_models_own_preprocessing(standardize):
    """On a mirror-symmetric photo both trunk calls see the same input, so the model's P(glasses) is
    exactly its final Dense on the features: true only if the luma conv and the per-image
    standardisation before the trunk were applied."""
    import keras

    from training.features import _penultimate, feature_extractor
    from training.models import _luma_flip_model

    model = _luma_flip_model(32, luma=True, trunk="gap", width=0.25, units=8, standardize=standardize,
                             learning_rate=1e-3, decay_steps=10, name="tiny")
    half = np.random.default_rng(1).integers(0, 256, size=(3, 32, 16, 3), dtype=np.uint8)
    photos = np.concatenate([half, half[:, :, ::-1]], axis=2)  # mirror-symmetric
    features = feature_extractor(model)(photos)
    dense = _penultimate(model)[0].layers[-1]
    assert features.shape == (3, dense.input.shape[-1])
    expected = model.predict(photos.astype(np.float32) / 255.0, verbose=0).ravel()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(dense(features)).ravel(), expected, rtol=1e-4, atol=1e-6)


def test_the_committed_celeba_review_list_is_an_exclusion_file():
    """glasses/data/excluded-celeba-review.txt: folder paths (class/file), readable by prepare --exclude."""
    from training.exclusions import read_exclusion_file

    listed = read_exclusion_file(REPO / "glasses" / "data" / "excluded-celeba-review.txt")
    assert len(listed.ids) == 7
    assert all(i.split("/")[0] in ("glasses", "no_glasses") and i.endswith(".jpg") for i in listed.ids)

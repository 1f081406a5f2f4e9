"""prepare with several sources: the deduplicated union, split by person across sources, lineage."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from glasses.preprocessing import to_uint8
from training.cli import UserError
from training.data import load_split, read_manifest
from training.prepare import SPLITS, prepare, prepare_sources
from training.union import prepare_union

from _fixtures import make_folders

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    """A: 40 photos of persons 100-109; B: 30 other photos of persons 100-115 (100-109 shared with A),
    plus one file copied byte for byte from A (a duplicate, listed under person 999 in B)."""
    base = tmp_path_factory.mktemp("union")
    a = make_folders(base / "a", n_glasses=12, n_no_glasses=28, persons=10, image_size=80)
    b = make_folders(base / "b", n_glasses=10, n_no_glasses=20, persons=16, image_size=72)
    shutil.copyfile(a / "glasses" / "glasses-0003.png", b / "glasses" / "copied-from-a.png")
    with open(b / "labels.csv", "a") as fh:
        fh.write("glasses/copied-from-a.png,1,999\n")
    work = base / "work"
    result = prepare_union([f"folders:{a}", f"folders:{b}"], size=64, work_dir=work, progress=False)
    return {"a": a, "b": b, "work": work, "result": result, "manifest": read_manifest(result.manifest_path)}


def test_union_drops_byte_identical_duplicates(two_sources):
    m = two_sources["manifest"]
    total = sum(len(m["splits"][s]["indices"]) for s in SPLITS)
    assert total == 40 + 31 - 1
    assert [s["duplicates_dropped"] for s in m["sources"]] == [0, 1]
    assert any("1 byte-identical duplicates dropped" in n for n in m["notes"])
    sha1s = [h for s in SPLITS for h in m["splits"][s]["sha1"]]
    assert len(set(sha1s)) == len(sha1s) == total
    files_b = [f for s in SPLITS for f, i in zip(m["splits"][s]["files"], m["splits"][s]["source_index"]) if i == 1]
    assert "glasses/copied-from-a.png" not in files_b


def test_a_person_in_both_sources_stays_in_one_split(two_sources):
    m = two_sources["manifest"]
    split_of: dict[str, set] = {}
    sources_of: dict[str, set] = {}
    for s in SPLITS:
        for g, i in zip(m["splits"][s]["groups"], m["splits"][s]["source_index"]):
            split_of.setdefault(g, set()).add(s)
            sources_of.setdefault(g, set()).add(i)
    shared = [g for g, srcs in sources_of.items() if srcs == {0, 1}]
    assert len(shared) == 10  # persons 100-109 have photos in both sources
    assert all(len(splits) == 1 for splits in split_of.values())
    assert m["grouped_by"] == "celeba_identity"


def test_manifest_records_every_source(two_sources):
    m = two_sources["manifest"]
    a, b = two_sources["a"], two_sources["b"]
    assert [s["source"] for s in m["sources"]] == [f"folders:{a.resolve()}", f"folders:{b.resolve()}"]
    singles = [prepare(f"folders:{p}", size=64, work_dir=two_sources["work"], progress=False) for p in (a, b)]
    assert [s["fingerprint"] for s in m["sources"]] == [p.fingerprint for p in singles]
    assert [s["kept"] for s in m["sources"]] == [40, 30]
    assert m["source"] == f"folders:{a.resolve()} + folders:{b.resolve()}"


def test_union_pixels_are_the_contract_of_each_source_file(two_sources):
    m = two_sources["manifest"]
    roots = [Path(s["root"]) for s in m["sources"]]
    x, _ = load_split(two_sources["result"].manifest_path, "train")
    entry = m["splits"]["train"]
    for k in range(0, len(entry["files"]), 7):
        direct = to_uint8(roots[entry["source_index"][k]] / entry["files"][k], 64)
        assert np.array_equal(x[k], direct)


def test_union_is_reused_and_rejects_a_source_given_twice(two_sources):
    a, b = two_sources["a"], two_sources["b"]
    again = prepare_sources([f"folders:{a}", f"folders:{b}"], size=64, work_dir=two_sources["work"], progress=False)
    assert again.reused and again.manifest_path == two_sources["result"].manifest_path
    with pytest.raises(UserError, match="given twice"):
        prepare_sources([f"folders:{a}", f"folders:{a}"], size=64, work_dir=two_sources["work"], progress=False)


def test_conflicting_duplicate_labels_are_reported(tmp_path):
    a = make_folders(tmp_path / "a", n_glasses=12, n_no_glasses=28, persons=10, image_size=64)
    b = make_folders(tmp_path / "b", n_glasses=12, n_no_glasses=28, persons=10, image_size=70)
    shutil.copyfile(a / "glasses" / "glasses-0000.png", b / "no_glasses" / "relabelled.png")
    p = prepare_union([f"folders:{a}", f"folders:{b}"], size=64, work_dir=tmp_path / "w", progress=False)
    assert any("labelled differently" in n and "relabelled.png" in n for n in p.notes)


def test_cli_takes_several_sources(two_sources):
    a, b = two_sources["a"], two_sources["b"]
    proc = subprocess.run([sys.executable, "-m", "training", "prepare", "--source", f"folders:{a}",
                           "--source", f"folders:{b}", "--size", "64", "--work-dir", str(two_sources["work"])],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "1 byte-identical duplicates dropped (sha1)" in proc.stdout
    assert str(two_sources["result"].manifest_path) in proc.stdout
    missing = subprocess.run([sys.executable, "-m", "training", "prepare", "--source", f"folders:{a}",
                              "--source", "folders:/nonexistent/x", "--work-dir", str(two_sources["work"])],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert json.loads(Path(two_sources["result"].manifest_path).read_text())["sources"]


def test_photo_keys_are_the_same_in_a_union_and_in_its_source(two_sources):
    from training.compare import photos_seen_in_training
    from training.data import photo_keys

    a = two_sources["a"]
    single = read_manifest(prepare(f"folders:{a}", size=64, work_dir=two_sources["work"], progress=False).manifest_path)
    union = two_sources["manifest"]
    from_a = {k for s in SPLITS for k in photo_keys(union, s) if k.startswith(f"folders:{a.resolve()}|")}
    assert from_a == {k for s in SPLITS for k in photo_keys(single, s)}  # all 40 photos of A, same keys
    # compare's check that a version trained on the union never saw the photos it is scored on
    meta = {"split_manifest_path": str(two_sources["result"].manifest_path)}
    trained = {k for s in ("train", "val") for k in photo_keys(union, s)}
    assert photos_seen_in_training(meta, photo_keys(single, "test")) == len(set(photo_keys(single, "test")) & trained)
    assert photos_seen_in_training(meta, sorted(from_a & trained)) == len(from_a & trained) > 0

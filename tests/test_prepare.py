"""prepare + data: Kaggle layout (dir and zip) with exclusions, folders with groups, cache reuse,
interrupted runs, bad inputs, the dask.distributed scheduler, tf.data pipelines, identical tensors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from glasses.config import CLASS_NAMES, SPLITS
from glasses.preprocessing import preprocess, to_uint8
from training import cache as cache_stage
from training.cli import UserError
from training.data import class_counts, load_split, make_dataset, manifest_hash, read_manifest
from training.prepare import prepare
from training.sources import load_excluded_ids
from training.split import split_assignments

from _fixtures import (
    EXCLUDED_SAMPLE,
    kaggle_default_rows,
    make_folders,
    make_kaggle_dir,
    make_kaggle_zip,
    write_corrupt_files,
)

REPO = Path(__file__).resolve().parent.parent


def _all_files(manifest: dict) -> list[str]:
    return [f for s in SPLITS for f in manifest["splits"][s]["files"]]


# --- Kaggle layout ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    """A Kaggle-layout dir with one missing image, one unlabelled image, one truncated PNG; and a clean zip."""
    base = tmp_path_factory.mktemp("kaggle")
    d = make_kaggle_dir(base / "dir", missing_image_ids=(5,), extra_image_ids=(99,), corrupt_ids=(7,))
    z = make_kaggle_zip(base / "glasses-or-no-glasses.zip")
    work = base / "work"
    return {"dir": d, "zip": z, "work": work,
            "prepared": prepare(f"kaggle-dir:{d}", work_dir=work, size=64, progress=False)}


def test_kaggle_dir_exclusions_and_reports(kaggle) -> None:
    p = kaggle["prepared"]
    train_rows, _ = kaggle_default_rows()
    labels = dict(train_rows)
    excluded = load_excluded_ids()
    assert {str(i) for i in EXCLUDED_SAMPLE} <= excluded  # the fixture really hits excluded ids
    want_excl = {c: sum(1 for i in EXCLUDED_SAMPLE if labels[i] == k) for k, c in enumerate(CLASS_NAMES)}
    assert p.excluded == want_excl and sum(want_excl.values()) == len(EXCLUDED_SAMPLE)
    assert p.skipped == [f"faces-spring-2020/faces-spring-2020/face-7.png: {p.skipped[0].split(': ', 1)[1]}"]
    assert "truncated" in p.skipped[0]
    assert p.missing_images == ["id 5: no faces-spring-2020/faces-spring-2020/face-5.png"]
    assert p.unlabelled_images == ["faces-spring-2020/faces-spring-2020/face-99.png"]  # test.csv ids are not listed
    m = read_manifest(p.manifest_path)
    ids = [i for s in SPLITS for i in m["splits"][s]["ids"]]
    kept = [i for i, _ in train_rows if i not in EXCLUDED_SAMPLE and i not in (5, 7)]
    assert sorted(map(int, ids)) == sorted(kept)
    assert len(set(ids)) == len(ids)
    for s in SPLITS:
        entry = m["splits"][s]
        assert [labels[int(i)] for i in entry["ids"]] == entry["labels"]
        assert p.counts[s] == {c: entry["labels"].count(k) for k, c in enumerate(CLASS_NAMES)}
    assert m["grouped_by"] is None and m["size"] == 64 and m["source"] == f"kaggle-dir:{kaggle['dir']}"
    for key in ("fingerprint", "preprocessing_version", "seed", "cache", "counts", "excluded"):
        assert key in m


def test_kaggle_zip_matches_dir_pixels(kaggle) -> None:
    pz = prepare(f"kaggle-dir:{kaggle['zip']}", work_dir=kaggle["work"], size=64, progress=False)
    assert pz.skipped == [] and pz.missing_images == [] and sum(pz.excluded.values()) == len(EXCLUDED_SAMPLE)
    mz, md = read_manifest(pz.manifest_path), read_manifest(kaggle["prepared"].manifest_path)
    xz, _ = load_split(pz.manifest_path, "train")
    xd, _ = load_split(kaggle["prepared"].manifest_path, "train")
    pos_z = {i: k for k, i in enumerate(mz["splits"]["train"]["ids"])}
    common = [(k, pos_z[i]) for k, i in enumerate(md["splits"]["train"]["ids"]) if i in pos_z]
    assert len(common) >= 10
    for kd, kz in common:
        assert np.array_equal(xd[kd], xz[kz])  # same PNG bytes -> same pixels, from a dir or inside a zip
    # the download directory holding just the zip is accepted too (what `--source kaggle` produces)
    again = prepare(f"kaggle-dir:{kaggle['zip'].parent}", work_dir=kaggle["work"], size=64, progress=False)
    assert again.fingerprint == pz.fingerprint and again.reused


def test_no_exclude_keeps_everything(kaggle) -> None:
    p = prepare(f"kaggle-dir:{kaggle['zip']}", work_dir=kaggle["work"], size=64, exclude=False, progress=False)
    assert sum(p.excluded.values()) == 0
    total = sum(sum(c.values()) for c in p.counts.values())
    assert total == len(kaggle_default_rows()[0])


# --- folders + grouped split --------------------------------------------------------------------
@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = make_folders(tmp_path_factory.mktemp("folders") / "src", no_glasses_dir="no-glasses")
    bad = write_corrupt_files(root / "glasses")
    work = root.parent / "work"
    return {"root": root, "bad": bad, "work": work, "prepared": prepare(f"folders:{root}", work_dir=work, size=64,
                                                                       progress=False)}


def test_folders_grouped_split_and_bad_files(folders) -> None:
    p = folders["prepared"]
    assert sorted(s.split(":")[0] for s in p.skipped) == sorted(f"glasses/{b}" for b in folders["bad"])
    m = read_manifest(p.manifest_path)
    assert m["grouped_by"] == "celeba_identity"
    seen: dict[str, str] = {}
    for s in SPLITS:
        for g in m["splits"][s]["groups"]:
            assert seen.setdefault(g, s) == s, f"person {g} in {seen[g]} and {s}"
    assert len({g for g in seen}) == 10
    # labels come from the folder names (no-glasses/ accepted), 12 + 28 readable images
    assert sum(c["glasses"] for c in p.counts.values()) == 12
    assert sum(c["no_glasses"] for c in p.counts.values()) == 28
    for s in SPLITS:
        for f, lab in zip(m["splits"][s]["files"], m["splits"][s]["labels"]):
            assert lab == (1 if f.startswith("glasses/") else 0)
    assert class_counts(p.manifest_path, "train") == p.counts["train"]
    # the corrupt files are not in labels.csv: reported unreadable, and noted as groups of their own
    assert any("each treated as its own group" in n for n in p.notes)


def test_split_assignments_grouped_stratified_seeded() -> None:
    rng = np.random.default_rng(0)
    groups = [f"p{i // 20}" for i in range(2000)]  # 100 persons x 20 images
    labels = (rng.random(2000) < np.repeat(rng.random(100) * 0.3, 20)).astype(int)  # some persons wear glasses
    a = split_assignments(labels, groups, seed=7)
    assert np.array_equal(a, split_assignments(labels, groups, seed=7))
    assert not np.array_equal(a, split_assignments(labels, groups, seed=8))
    for g in set(groups):
        assert len({a[i] for i in range(2000) if groups[i] == g}) == 1
    for c in (0, 1):
        share = np.bincount(a[labels == c], minlength=3) / (labels == c).sum()
        assert np.allclose(share, (0.8, 0.1, 0.1), atol=0.04), share
    u = split_assignments(labels, None, seed=7)
    for c in (0, 1):
        n = (labels == c).sum()
        assert np.bincount(u[labels == c], minlength=3).tolist() == [n - 2 * round(n * 0.1), round(n * 0.1),
                                                                     round(n * 0.1)]


# --- cache --------------------------------------------------------------------------------------
def test_cache_reuse_and_invalidation(tmp_path) -> None:
    root = make_folders(tmp_path / "src", n_glasses=6, n_no_glasses=10, persons=None)
    first = prepare(f"folders:{root}", work_dir=tmp_path / "w", size=64, progress=False)
    again = prepare(f"folders:{root}", work_dir=tmp_path / "w", size=64, progress=False)
    assert not first.reused and again.reused
    assert (again.fingerprint, again.manifest_path) == (first.fingerprint, first.manifest_path)
    other_size = prepare(f"folders:{root}", work_dir=tmp_path / "w", size=128, progress=False)
    assert other_size.fingerprint != first.fingerprint and not other_size.reused
    img = root / "glasses" / sorted(os.listdir(root / "glasses"))[0]
    os.utime(img, ns=(1, 1))  # touched file -> new fingerprint -> rebuilt
    touched = prepare(f"folders:{root}", work_dir=tmp_path / "w", size=64, progress=False)
    assert touched.fingerprint != first.fingerprint and not touched.reused
    other_seed = prepare(f"folders:{root}", work_dir=tmp_path / "w", size=64, seed=99, progress=False)
    assert other_seed.reused and other_seed.manifest_path != touched.manifest_path


def test_interrupted_prepare_leaves_no_complete_cache(tmp_path, monkeypatch) -> None:
    root = make_folders(tmp_path / "src", n_glasses=8, n_no_glasses=16, persons=None)
    real = cache_stage.decode_chunk
    calls = []

    def crashing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # like Ctrl-C in the middle of decoding
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_stage, "decode_chunk", crashing)
    with pytest.raises(KeyboardInterrupt):
        prepare(f"folders:{root}", work_dir=tmp_path / "w", size=64, scheduler="synchronous", progress=False)
    cache = tmp_path / "w" / "cache"
    assert list(cache.iterdir()) == []  # neither a final dir nor a temp dir
    monkeypatch.setattr(cache_stage, "decode_chunk", real)
    p = prepare(f"folders:{root}", work_dir=tmp_path / "w", size=64, progress=False)
    assert not p.reused and sum(sum(c.values()) for c in p.counts.values()) == 24


def test_killed_prepare_is_not_taken_as_complete(tmp_path) -> None:
    """A process killed mid-decode (os._exit: no cleanup at all) leaves only a temp dir, removed later."""
    root = make_folders(tmp_path / "src", n_glasses=8, n_no_glasses=16, persons=None)
    work = tmp_path / "w"
    script = textwrap.dedent(f"""
        import os
        from training import cache, prepare
        real, calls = cache.decode_chunk, []
        def dying(*a, **k):
            calls.append(1)
            if len(calls) == 3:
                os._exit(9)
            return real(*a, **k)
        cache.decode_chunk = dying
        prepare.prepare("folders:{root}", work_dir=r"{work}", size=64, scheduler="synchronous", progress=False)
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 9, r.stderr
    left = list((work / "cache").iterdir())
    assert len(left) == 1 and left[0].name.startswith(".tmp-")  # no directory that looks complete
    p = prepare(f"folders:{root}", work_dir=work, size=64, progress=False)
    assert not p.reused
    assert [d.name for d in (work / "cache").iterdir()] == [p.cache_dir.name]  # stale temp dir cleaned


def test_stale_temp_dirs_of_other_hosts_are_left_alone(tmp_path) -> None:
    """A shared work dir: only this host's dead builds are removed; a pid from another host means nothing here."""
    import socket

    dead_pid = 2**22 + 12345  # above Linux's pid_max default range: no such process
    dirs = {}
    for name, host in (("mine", socket.gethostname()), ("theirs", "another-host"), ("legacy", None)):
        d = tmp_path / f".tmp-{'0' * 16}-{dead_pid}-{name}"
        d.mkdir()
        if host:
            (d / "owner").write_text(host)
        dirs[name] = d
    removed = cache_stage.clean_stale_tmp(tmp_path)
    assert sorted(d.name for d in removed) == sorted([dirs["mine"].name, dirs["legacy"].name])
    assert dirs["theirs"].exists()


# --- bad inputs ---------------------------------------------------------------------------------
def _bad_csv_kaggle(tmp_path: Path) -> Path:
    d = make_kaggle_dir(tmp_path / "badcsv", n_train=4, n_test=0)
    lines = (d / "train.csv").read_text().splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0] + ",2"
    (d / "train.csv").write_text("\n".join(lines) + "\n")
    return d


@pytest.mark.parametrize("case, message", [
    ("missing", "not found"),
    ("empty", "has no glasses/ or no_glasses/ folder"),
    ("empty-classes", "no files in"),
    ("one-class", "no no_glasses/ folder"),
    ("kaggle-no-csv", "no train.csv"),
    ("kaggle-bad-label", "glasses must be 0 or 1"),
    ("bad-group-column", "no group column 'nobody'"),
    ("bad-source", "unknown source"),
    ("too-small", r"too small for a 0.8/0.1/0.1 split: val and test would be empty \(4 readable images\)"),
])
def test_bad_sources_are_one_line_user_errors(tmp_path, case: str, message: str) -> None:
    group_column = None
    if case == "missing":
        src = f"folders:{tmp_path / 'nope'}"
    elif case == "empty":
        src = f"folders:{tmp_path}"
    elif case == "empty-classes":
        (tmp_path / "glasses").mkdir()
        (tmp_path / "no_glasses").mkdir()
        src = f"folders:{tmp_path}"
    elif case == "one-class":
        make_folders(tmp_path / "s", n_glasses=3, n_no_glasses=3, persons=None)
        os.rename(tmp_path / "s" / "no_glasses", tmp_path / "elsewhere")
        src = f"folders:{tmp_path / 's'}"
    elif case == "kaggle-no-csv":
        src = f"kaggle-dir:{tmp_path}"
    elif case == "kaggle-bad-label":
        src = f"kaggle-dir:{_bad_csv_kaggle(tmp_path)}"
    elif case == "bad-group-column":
        src, group_column = f"folders:{make_folders(tmp_path / 's', n_glasses=2, n_no_glasses=2, persons=2)}", "nobody"
    elif case == "too-small":
        src = f"folders:{make_folders(tmp_path / 's', n_glasses=2, n_no_glasses=2, persons=None)}"
    else:
        src = f"ftp:{tmp_path}"
    with pytest.raises(UserError, match=message) as info:
        prepare(src, work_dir=tmp_path / "w", group_column=group_column, progress=False)
    assert "\n" not in str(info.value)


def test_a_one_class_test_split_is_reported(tmp_path) -> None:
    """4 glasses photos: round(0.4) = 0 of them in val and test; prepare says so instead of failing later."""
    root = make_folders(tmp_path / "s", n_glasses=4, n_no_glasses=30, persons=None)
    data = prepare(f"folders:{root}", work_dir=tmp_path / "w", progress=False)
    assert data.counts["test"]["glasses"] == 0
    assert any("the test split has no glasses image" in note for note in data.notes)
    assert not any("no_glasses image" in note for note in data.notes)


def test_cli_errors_are_one_line(tmp_path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "GLASSES_WORK_DIR": str(tmp_path / "w")}
    for k in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        env.pop(k, None)
    for args in (["--source", f"folders:{tmp_path / 'nowhere'}"], ["--source", "kaggle"],
                 ["--source", f"kaggle-dir:{tmp_path}"]):
        r = subprocess.run([sys.executable, "-m", "training", "prepare", *args], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("glasses-train prepare: error:"), r.stderr
        assert "Traceback" not in r.stderr


def test_cli_prepare_prints_summary(tmp_path) -> None:
    root = make_kaggle_dir(tmp_path / "k", n_train=12, n_test=2)
    cmd = [sys.executable, "-m", "training", "prepare", "--source", f"kaggle-dir:{root}", "--size", "64",
           "--work-dir", str(tmp_path / "w")]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    for needle in ("train", "val", "test", "excluded: no_glasses", "by the paper's list (sha256 ",
                   "skipped (unreadable): 0", "(built)", "fingerprint: "):
        assert needle in first.stdout, first.stdout
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "(reused)" in second.stdout
    fp = [line for line in first.stdout.splitlines() if line.startswith("fingerprint:")]
    assert fp and fp[0] in second.stdout


# --- dask.distributed ---------------------------------------------------------------------------
def test_distributed_scheduler_gives_same_cache(tmp_path, folders) -> None:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp", host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        p = prepare(f"folders:{folders['root']}", work_dir=tmp_path / "w", size=64,
                    scheduler=cluster.scheduler_address, progress=True)  # distributed's text progress bar too
        prefixes = cluster.scheduler.task_prefixes
        assert "decode" in prefixes and sum(prefixes["decode"].state_counts.values()) >= 8  # ran there
    local = folders["prepared"]
    assert p.fingerprint == local.fingerprint and not p.reused and p.skipped == local.skipped
    assert np.array_equal(np.load(p.cache_dir / "images.npy"), np.load(local.cache_dir / "images.npy"))


def test_unreachable_scheduler_is_a_user_error(tmp_path, folders, monkeypatch) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the with-block ends: nothing listens there
    monkeypatch.setattr(cache_stage, "SCHEDULER_TIMEOUT", "2s")
    with pytest.raises(UserError, match="cannot reach the dask scheduler"):
        prepare(f"folders:{folders['root']}", work_dir=tmp_path / "w", size=64, scheduler=f"tcp://127.0.0.1:{port}",
                progress=False)


# --- tf.data and identical tensors --------------------------------------------------------------
def test_same_file_same_tensor_through_cache_and_contract(folders) -> None:
    tf = pytest.importorskip("tensorflow")
    p = folders["prepared"]
    m = read_manifest(p.manifest_path)
    checked = 0
    for split in SPLITS:
        files = m["splits"][split]["files"]
        ds = make_dataset(p.manifest_path, split, batch_size=len(files), shuffle=False)
        x, y = next(iter(ds))
        assert x.dtype == tf.float32 and y.dtype == tf.float32 and tuple(y.shape) == (len(files),)
        for k, f in enumerate(files):
            direct = preprocess(Path(m["root"]) / f, 64)
            assert np.array_equal(x.numpy()[k], direct), f  # bit-identical, every PIL mode in the fixture
            checked += 1
        assert y.numpy().tolist() == [float(v) for v in m["splits"][split]["labels"]]
    assert checked == sum(sum(c.values()) for c in p.counts.values())


def test_make_dataset_shuffle_seed_and_augment(folders) -> None:
    tf = pytest.importorskip("tensorflow")
    mp = folders["prepared"].manifest_path
    n = sum(folders["prepared"].counts["train"].values())

    def labels(ds):
        return np.concatenate([b[1].numpy() for b in ds])

    a = make_dataset(mp, "train", batch_size=8, seed=1)
    assert np.array_equal(labels(a), labels(make_dataset(mp, "train", batch_size=8, seed=1)))
    x_ref, y_ref = load_split(mp, "train")
    images = np.concatenate([b[0].numpy() for b in make_dataset(mp, "train", batch_size=8, seed=1)])
    assert images.shape == (n, 64, 64, 3) and images.dtype == np.float32
    order = [int(np.flatnonzero((x_ref == np.rint(img * 255).astype(np.uint8)).all(axis=(1, 2, 3)))[0])
             for img in images]
    assert sorted(order) == list(range(n)) and order != list(range(n))  # a permutation: shuffled
    flipped = make_dataset(mp, "train", batch_size=n, shuffle=False,
                           augment=lambda x, y: (tf.image.flip_left_right(x), y))
    xf = next(iter(flipped))[0].numpy()
    assert np.array_equal(xf, x_ref[:, :, ::-1].astype(np.float32) / np.float32(255.0))
    val = make_dataset(mp, "val", batch_size=64, augment=lambda x, y: (x * 0.0, y))  # train only
    assert next(iter(val))[0].numpy().max() > 0
    assert len(manifest_hash(mp)) == 64


# --- real photos (skips when ../shared is absent) -------------------------------------------------
def test_real_celeba_subset(celeba_dir, tmp_path) -> None:
    import csv

    rows = list(csv.DictReader(open(celeba_dir / "labels.csv")))
    persons = sorted({r["celeba_identity"] for r in rows if r["eyeglasses"] == "1"})[:10]
    persons += sorted({r["celeba_identity"] for r in rows} - set(persons))[:10]
    subset = [r for r in rows if r["celeba_identity"] in set(persons)]
    root = tmp_path / "celeba"
    for r in subset:  # symlinks only: the photos are never copied
        (root / r["file"]).parent.mkdir(parents=True, exist_ok=True)
        (root / r["file"]).symlink_to(celeba_dir / r["file"])
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(subset)
    p = prepare(f"folders:{root}", work_dir=tmp_path / "w", progress=False)
    m = read_manifest(p.manifest_path)
    assert p.skipped == [] and m["grouped_by"] == "celeba_identity"
    by_file = {r["file"]: r for r in subset}
    where: dict[str, str] = {}
    for s in SPLITS:
        assert p.counts[s]["glasses"] > 0 and p.counts[s]["no_glasses"] > 0, p.counts
        for f, lab, g in zip(m["splits"][s]["files"], m["splits"][s]["labels"], m["splits"][s]["groups"]):
            assert int(by_file[f]["eyeglasses"]) == lab and by_file[f]["celeba_identity"] == g
            assert where.setdefault(g, s) == s
    x, y = load_split(p.manifest_path, "test")
    f0 = m["splits"]["test"]["files"][0]
    assert np.array_equal(x[0], to_uint8(celeba_dir / f0, 128))
    assert prepare(f"folders:{root}", work_dir=tmp_path / "w", progress=False).reused

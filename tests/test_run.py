"""`glasses-train run` end to end in a subprocess (temp BENTOML_HOME + work dir), then `experiments`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _training import cli_env, glasses_train, tiny_source
from glasses.files import file_sha256
from training.rundir import RunDir


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("run")
    source = tiny_source(tmp_path_factory.getbasetemp())
    env = cli_env(BENTOML_HOME=str(base / "bentoml"), BENTOML_DO_NOT_TRACK="True")
    work = base / "work"
    proc = glasses_train(["run", "--source", f"folders:{source}", "--profile", "smoke", "--size", "64",
                          "--work-dir", str(work)], env=env, timeout=400)
    return {"proc": proc, "env": env, "work": work, "source": source, "base": base}


def test_run_prepares_tunes_evaluates_registers_and_promotes(finished_run):
    proc = finished_run["proc"]
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    out = proc.stdout
    for stage in ("== prepare", "== tune", "== evaluate", "== register", "== artefacts"):
        assert stage in out
    artefacts = dict(line.split(None, 1) for line in out.split("== artefacts")[1].strip().splitlines())
    for key in ("manifest", "tuner_dir", "run_dir", "model", "report", "learning_curves", "store", "tag"):
        assert key in artefacts, key
    assert artefacts["promoted"].strip() == "yes"
    for key in ("manifest", "model", "report", "learning_curves"):
        assert Path(artefacts[key].strip()).exists(), key
    tag = artefacts["tag"].strip()

    listed = glasses_train(["registry", "list", "--json"], env=finished_run["env"], timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    (row,) = json.loads(listed.stdout)
    assert row["tag"] == tag and row["promoted"] and row["profile"] == "smoke"

    shown = glasses_train(["registry", "show", tag], env=finished_run["env"], timeout=120)
    meta = json.loads(shown.stdout)["metadata"]
    report = json.loads(Path(artefacts["report"].strip()).read_text())
    assert meta["metrics"]["roc_auc"] == pytest.approx(report["metrics"]["roc_auc"])
    assert meta["split_manifest_hash"] == report["manifest_hash"]
    assert meta["tuner"]["trials"] == 2 and meta["data_source"].startswith("folders:")
    hardware = meta["training_hardware"]  # how fast it could train: the CPU and the precision used
    assert hardware["cpu_model"] not in ("", "not recorded")
    assert hardware["precision"] in ("float32", "mixed_bfloat16") and hardware["reason"]


def test_run_with_a_wrong_source_is_one_line(finished_run, tmp_path):
    proc = glasses_train(["run", "--source", f"folders:{tmp_path / 'nope'}", "--profile", "smoke",
                          "--work-dir", str(tmp_path)], env=finished_run["env"], timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "nope" in proc.stderr


def test_experiments_writes_the_table_beside_the_papers_numbers(finished_run):
    """Two ladder models x 1 epoch; the Hyperband row reuses the finished smoke search of the run."""
    from training.experiments import experiments

    results = experiments(f"folders:{finished_run['source']}", profile="smoke", epochs=1, size=64,
                          work_dir=finished_run["work"], out_dir=finished_run["base"] / "exp",
                          ladder=("perceptron", "batchnorm_cnn_lr_decay"))
    table = results.read_text()
    assert "| Perceptron | 12,289 | 1 |" in table
    assert "| 0.870 | 0.27 |" in table  # the paper's perceptron figures beside ours
    assert "CNN + batch norm + LR decay" in table and "Hyperband best model" in table
    assert "| 0.990 | 0.10 |" in table
    data = json.loads((results.parent / "results.json").read_text())
    assert [r["name"] for r in data["rows"]] == ["perceptron", "batchnorm_cnn_lr_decay", "hyperband"]
    assert all(Path(r["report"]).exists() for r in data["rows"])


def test_experiments_reuses_a_finished_run_for_the_hyperband_row(finished_run):
    """--tuned-run: the run's evaluated model is the Hyperband row; another manifest is refused up front."""
    from training.cli import UserError
    from training.experiments import experiments

    artefacts = dict(line.split(None, 1) for line in finished_run["proc"].stdout.split("== artefacts")[1].strip().splitlines())
    run_dir = Path(artefacts["run_dir"].strip())
    common = dict(profile="smoke", epochs=1, size=64, work_dir=finished_run["work"], ladder=("perceptron",),
                  out_dir=finished_run["base"] / "exp-reuse")
    ladder_only = experiments(f"folders:{finished_run['source']}", hyperband=False, **common)
    first = json.loads((ladder_only.parent / "results.json").read_text())["rows"]
    assert [r["name"] for r in first] == ["perceptron"]
    # later, same --out: the fitted ladder model is reused, the run supplies the Hyperband row
    results = experiments(f"folders:{finished_run['source']}", tuned_run=run_dir, **common)
    rows = json.loads((results.parent / "results.json").read_text())["rows"]
    evaluation = json.loads(RunDir(run_dir).report.read_text())
    assert [r["name"] for r in rows] == ["perceptron", "hyperband"]
    assert rows[0] == first[0]  # not refitted (the wall time would differ)
    assert rows[1]["metrics"] == evaluation["metrics"] and rows[1]["report"] == str(RunDir(run_dir).report)
    with pytest.raises(UserError, match="another split manifest"):  # 128 px: a different manifest
        experiments(f"folders:{finished_run['source']}", profile="smoke", epochs=1, size=128,
                    work_dir=finished_run["work"], out_dir=finished_run["base"] / "exp-other", tuned_run=run_dir)


@pytest.fixture(scope="module")
def excluding_run(tmp_path_factory):
    """`run --exclude A --exclude B` on the tiny source: A leaves out one glasses photo, B one no_glasses photo."""
    base = tmp_path_factory.mktemp("run-exclude")
    source = tiny_source(tmp_path_factory.getbasetemp())
    left_out = {cls: sorted(p.relative_to(source).as_posix() for p in (source / cls).iterdir())[0]
                for cls in ("glasses", "no_glasses")}
    files = {cls: base / f"exclude-{cls}.txt" for cls in left_out}
    for cls, path in files.items():
        path.write_text(f"# reviewed by eye\n{left_out[cls]}  # wrong label\n")
    env = cli_env(BENTOML_HOME=str(base / "bentoml"), BENTOML_DO_NOT_TRACK="True")
    proc = glasses_train(["run", "--source", f"folders:{source}", "--profile", "smoke", "--size", "64", "--no-promote", "--force",
                          "--exclude", str(files["glasses"]), "--exclude", str(files["no_glasses"]),
                          "--work-dir", str(base / "work")], env=env, timeout=400)
    return {"proc": proc, "env": env, "files": files, "left_out": left_out}


def test_run_exclude_reaches_prepare_and_the_lineage(excluding_run):
    proc = excluding_run["proc"]
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    files, left_out = excluding_run["files"], excluding_run["left_out"]
    artefacts = dict(line.split(None, 1) for line in proc.stdout.split("== artefacts")[1].strip().splitlines())
    for cls, path in files.items():
        assert f"excluded by {path.resolve()} (sha256 {file_sha256(path)[:12]})" in proc.stdout
    manifest = json.loads(Path(artefacts["manifest"].strip()).read_text())
    kept = {f for split in manifest["splits"].values() for f in split["files"]}
    assert len(kept) == 64 - 2 and not kept & set(left_out.values())
    expected = [{"file": str(files[cls].resolve()), "sha256": file_sha256(files[cls]),
                 "removed": {"glasses": int(cls == "glasses"), "no_glasses": int(cls == "no_glasses")}}
                for cls in ("glasses", "no_glasses")]
    recorded = [{k: r[k] for k in ("file", "sha256", "removed")} for r in manifest["exclusions"]]
    assert recorded == expected
    shown = glasses_train(["registry", "show", artefacts["tag"].strip()], env=excluding_run["env"], timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    lineage = json.loads(shown.stdout)["metadata"]["data_exclusions"]
    assert [{k: r[k] for k in ("file", "sha256", "removed")} for r in lineage] == expected


def test_run_with_a_missing_exclusion_file_is_one_line(finished_run, tmp_path):
    proc = glasses_train(["run", "--source", f"folders:{finished_run['source']}", "--profile", "smoke",
                          "--exclude", str(tmp_path / "gone.txt"), "--work-dir", str(tmp_path)],
                         env=finished_run["env"], timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"glasses-train run: error: exclusion file not found: {tmp_path / 'gone.txt'}"]

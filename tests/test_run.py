"""`glasses-train run` end to end in a subprocess (temp BENTOML_HOME + work dir), then `experiments`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _training import cli_env, glasses_train, tiny_source
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

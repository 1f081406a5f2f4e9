"""Registry aliases: production / candidate / any name, rollback, the audit history, concurrent writers.

Versions here are real BentoML models in a private store holding a small file (aliases only need the
version to exist); the concurrency test runs two real CLI-equivalent processes on one store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import bentoml
import pytest

from glasses import registry
from glasses.config import MODEL_NAME
from training.cli import main

from _training import REPO, cli_env, private_store


@pytest.fixture()
def store(tmp_path):
    with private_store(tmp_path / "bentoml") as home:
        yield home


def _version(n: int) -> str:
    with bentoml.models.create(MODEL_NAME, labels={"n": str(n)}, metadata={"metrics": {"n": 10 * n}}) as ctx:
        with open(ctx.path_of("model.keras"), "w") as fh:
            fh.write(f"version {n}")
    return str(ctx.tag)


def test_promote_sets_production_and_rollback_walks_back(store):
    a, b, c = _version(1), _version(2), _version(3)
    assert registry.promote(a) == a and registry.promoted_tag() == a
    registry.promote(b, note="better AUC")
    registry.promote(c)
    assert registry.promoted_tag() == c
    assert registry.rollback(note="c misbehaves")["to"] == b
    assert registry.rollback()["to"] == a  # rollbacks stack: each one undoes one more move
    with pytest.raises(registry.RegistryError, match="nothing to roll back to"):
        registry.rollback()
    registry.promote(c)
    assert registry.rollback()["to"] == a  # after a new promotion: back to what it replaced

    history = registry.read_history()
    assert [(e["action"], e["from"], e["to"]) for e in history] == [
        ("promote", None, a), ("promote", a, b), ("promote", b, c), ("rollback", c, b), ("rollback", b, a),
        ("promote", a, c), ("rollback", c, a)]
    assert history[1]["note"] == "better AUC" and history[3]["note"] == "c misbehaves"
    assert all("@" in e["by"] and e["at"].endswith("+00:00") for e in history)


def test_aliases_any_name_traffic_shadow_and_unset(store):
    a, b = _version(1), _version(2)
    registry.promote(a)
    registry.set_alias("candidate", b, traffic=0.25)
    registry.set_alias("staging", b)
    aliases = registry.read_aliases()
    assert aliases["candidate"] == {"tag": b, "traffic": 0.25, "shadow": False}
    assert aliases["staging"]["tag"] == b and aliases["production"]["tag"] == a
    registry.set_alias("candidate", b, shadow=True)
    assert registry.read_aliases()["candidate"] == {"tag": b, "traffic": 0.0, "shadow": True}
    registry.set_alias("staging", None, action="alias unset")
    assert "staging" not in registry.read_aliases()
    for kwargs, message in (({"name": "Bad Name", "tag": a}, "must match"),
                            ({"name": "candidate", "tag": a, "traffic": 1.5}, "between 0 and 1"),
                            ({"name": "production", "tag": a, "traffic": 0.5}, "give --traffic/--shadow"),
                            ({"name": "candidate", "tag": "glasses_classifier:nope"}, "no model"),
                            ({"name": "production", "tag": None}, "cannot be unset"),
                            ({"name": "nothere", "tag": None}, "is not set")):
        with pytest.raises(registry.RegistryError, match=message):
            registry.set_alias(**kwargs)


def test_cli_alias_history_rollback_and_list(store, capsys):
    a, b = _version(1), _version(2)
    assert main(["registry", "promote", a, "--note", "first"]) == 0
    assert main(["registry", "alias", "set", "candidate", b, "--traffic", "0.1", "--note", "canary"]) == 0
    assert main(["registry", "alias", "list"]) == 0
    out = capsys.readouterr().out
    assert f"candidate    {b}  traffic 0.1" in out and f"production   {a}" in out
    assert main(["registry", "promote", b]) == 0
    assert main(["registry", "rollback", "--note", "oops"]) == 0
    assert registry.promoted_tag() == a
    capsys.readouterr()
    assert main(["registry", "history"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and "rollback" in lines[-1] and f"{b} -> {a}" in lines[-1] and "# oops" in lines[-1]
    assert main(["registry", "list", "--json"]) == 0
    rows = {r["tag"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[a]["aliases"] == ["production"] and rows[a]["promoted"] and rows[b]["aliases"] == ["candidate"]
    assert main(["registry", "alias", "unset", "production"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot be unset" in err


def test_older_pointer_file_reads_as_production(store):
    a = _version(1)
    (store / "glasses_registry.json").write_text(json.dumps({"promoted": a, "history": []}))
    assert registry.promoted_tag() == a and registry.read_aliases() == {
        "production": {"tag": a, "traffic": 0.0, "shadow": False}}


WRITER = """
import sys, time
from pathlib import Path
from glasses import registry
prefix, tag, go, n = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
while not go.exists():
    time.sleep(0.01)
for i in range(n):
    registry.set_alias(f"{prefix}{i}", tag, note=f"{prefix} {i}")
"""


def test_two_concurrent_processes_lose_no_write(store):
    """Two real processes set 25 aliases each at the same moment: every write and history line survives."""
    tag, n = _version(1), 25
    go = store / "go"
    env = cli_env(BENTOML_HOME=str(store), BENTOML_DO_NOT_TRACK="True")
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, prefix, tag, str(go), str(n)], cwd=REPO, env=env,
                              stderr=subprocess.PIPE, text=True) for prefix in ("a", "b")]
    time.sleep(1.0)  # both importing / waiting
    go.touch()
    for proc in procs:
        assert proc.wait(timeout=180) == 0, proc.stderr.read()[-2000:]
    aliases = registry.read_aliases()
    assert {f"{p}{i}" for p in "ab" for i in range(n)} == set(aliases)
    history = registry.read_history()
    assert len(history) == 2 * n and {e["note"] for e in history} == {f"{p} {i}" for p in "ab" for i in range(n)}
    assert not [p for p in os.listdir(store) if p.endswith(".tmp")]

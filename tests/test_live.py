"""The live registry end to end: one real `bentoml serve` with 2 workers on 127.0.0.1 follows the
registry while a bounded load runs: promote, kill -9, rollback, canary, shadow, refused versions.

The tests run in order on one server and one store (each leaves production on a known version).
Convergence is checked against TEST_BOUND_S, a loose allowance for a shared CI machine; the real
swap time is measured by `python -m loadtests.swap` (docs/service.md).
"""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
import requests

from _live import IMAGES, Load, converged, glasses_train, metric_sum, wait_metric
from _service import ServiceServer, register_models

TEST_BOUND_S = 90.0


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    home = tmp_path_factory.mktemp("live-store") / "bentoml"
    tags = register_models(home, [
        {"seed": 0, "promote": True}, {"seed": 1}, {"seed": 2, "variant": "corrupt"},
        {"seed": 3, "variant": "mismatched"}, {"seed": 4, "variant": "old-preprocessing"},
        {"seed": 0, "threshold": 0.0},  # A's weights, threshold 0: every verdict "glasses"
    ])
    names = dict(zip(("a", "b", "corrupt", "mismatched", "old", "always"), tags))
    with ServiceServer(home, env={"GLASSES_SERVE_WORKERS": "2"}) as server:
        yield server, home, names


def _log(server) -> str:
    return server.log_tail(100_000)


def _workers(server) -> set[int]:
    """pids of BentoML's worker processes (the ones that import the service and answer requests)."""
    pids = set()
    for proc in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and "worker" in " ".join(proc.cmdline()):
                pids.add(proc.pid)
        except psutil.Error:
            continue
    return pids


def _switch(server, home, load: Load, old: str, new: str, *cli: str) -> float:
    """Run the registry command under load; wait until answers come from `new`; seconds it took."""
    start = time.monotonic()
    glasses_train(home, "registry", *cli)
    assert load.wait_for(converged(new), TEST_BOUND_S), f"not all answers from {new} after {TEST_BOUND_S} s"
    last_old = max((a.sent for a in load.answers if a.model == old), default=start)
    return last_old - start


def test_promote_under_load_every_worker_switches_and_no_request_fails(live):
    server, home, v = live
    with Load(server.url) as load:
        assert load.wait_for(converged(v["a"], 10), TEST_BOUND_S)
        took = _switch(server, home, load, v["a"], v["b"], "promote", v["b"], "--note", "better")
        time.sleep(2)
    assert all(a.status == 200 for a in load.answers), {a.status for a in load.answers}
    assert {a.model for a in load.answers} == {v["a"], v["b"]}
    switched = [a for a in load.answers if a.sent > load.answers[0].sent + 0 and a.model == v["b"]]
    assert len(switched) >= 40
    print(f"promote under load: {len(load.answers)} answers, 0 failed, old answers until {took:.2f} s after the call")
    assert _log(server).count(f"swapped production: {v['a']} -> {v['b']}") == 2  # one line per worker
    card = requests.get(f"{server.url}/model", timeout=30).json()
    assert card["tag"] == v["b"] and card["aliases"]["production"]["tag"] == v["b"]


def test_a_killed_worker_comes_back_on_the_current_target(live):
    server, home, v = live
    before = _workers(server)
    assert len(before) == 2, before
    with Load(server.url) as load:
        assert load.wait_for(converged(v["b"], 10), TEST_BOUND_S)
        os.kill(min(before), signal.SIGKILL)
        deadline, new = time.monotonic() + 180, set()
        while time.monotonic() < deadline and not new:
            new = {pid for pid in _workers(server) - before if f"glasses live: worker {pid} serving" in _log(server)}
            time.sleep(0.5)
        assert new, "the killed worker was not respawned"
        assert f"glasses live: worker {new.pop()} serving production={v['b']}" in _log(server)
        load.wait_for(lambda answers: False, 3)
    assert {a.model for a in load.answers if a.status == 200} == {v["b"]}


def test_rollback_works_live(live):
    server, home, v = live
    with Load(server.url) as load:
        assert load.wait_for(converged(v["b"], 10), TEST_BOUND_S)
        _switch(server, home, load, v["b"], v["a"], "rollback", "--note", "b misbehaves")
    assert all(a.status == 200 for a in load.answers)
    history = glasses_train(home, "registry", "history").stdout
    assert "rollback" in history and "# b misbehaves" in history


def test_canary_share_and_explicit_model_choice(live):
    server, home, v = live
    glasses_train(home, "registry", "alias", "set", "candidate", v["b"], "--traffic", "0.3")
    assert wait_metric(server.url, "glasses_reload_total", 2, alias="candidate", tag=v["b"], result="loaded") >= 2
    n = 400
    with Load(server.url) as load:
        assert load.wait_for(lambda answers: len(answers) >= n, TEST_BOUND_S * 2)
    answers = load.answers[:n]
    assert all(a.status == 200 for a in answers)
    share = sum(a.model == v["b"] for a in answers) / n
    assert abs(share - 0.3) <= 4.5 * (0.3 * 0.7 / n) ** 0.5, share  # binomial, 4.5 sigma
    image = {"image": ("f.jpg", IMAGES[0])}
    for asked, expected in (("candidate", v["b"]), ("production", v["a"]), (v["b"], v["b"]),
                            (v["a"].split(":")[1], v["a"])):
        for _ in range(4):
            assert requests.post(f"{server.url}/predict?model={asked}", files=image, timeout=30).json()["model"] == expected
    assert requests.post(f"{server.url}/predict", files=image, headers={"X-Glasses-Model": "candidate"},
                         timeout=30).json()["model"] == v["b"]
    unknown = requests.post(f"{server.url}/predict?model=nope", files=image, timeout=30)
    assert unknown.status_code == 404 and "not served here" in unknown.json()["error"]
    card = requests.get(f"{server.url}/model", timeout=30).json()
    assert card["served"]["candidate"] == {**card["served"]["candidate"], "tag": v["b"], "traffic": 0.3}
    assert "model=" in requests.get(f"{server.url}/docs.json", timeout=30).text


def test_shadow_counts_agreement_exactly(live):
    server, home, v = live
    glasses_train(home, "registry", "alias", "set", "candidate", v["always"], "--shadow")
    assert wait_metric(server.url, "glasses_reload_total", 2, alias="candidate", tag=v["always"], result="loaded") >= 2
    verdicts = []
    for i in range(60):
        body = requests.post(f"{server.url}/predict", files={"image": ("f.jpg", IMAGES[i % 16])}, timeout=30).json()
        assert body["model"] == v["a"]  # production answers
        verdicts.append(body["verdict"])
    batch = requests.post(f"{server.url}/predict_batch", files=[("images", ("f.jpg", im)) for im in IMAGES[:8]],
                          timeout=30).json()
    verdicts += [item["verdict"] for item in batch]
    assert {"glasses", "no_glasses"} <= set(verdicts)  # the check below means something
    labels = {"production": v["a"], "candidate": v["always"]}
    total = wait_metric(server.url, "glasses_shadow_total", len(verdicts), **labels)
    assert total == len(verdicts)
    assert metric_sum(server.url, "glasses_shadow_total", outcome="agree", **labels) == verdicts.count("glasses")
    assert metric_sum(server.url, "glasses_shadow_total", outcome="disagree", **labels) == verdicts.count("no_glasses")
    report = glasses_train(home, "registry", "shadow-report", "--url", server.url).stdout
    assert f"{v['always']} vs {v['a']}" in report and "agreement" in report
    glasses_train(home, "registry", "alias", "unset", "candidate")


@pytest.mark.parametrize("bad, reason", [("corrupt", "Error"), ("mismatched", "parity probe"),
                                         ("old", "preprocessing")])
def test_a_bad_version_is_refused_and_the_old_one_keeps_serving(live, bad, reason):
    server, home, v = live
    with Load(server.url) as load:
        glasses_train(home, "registry", "promote", v[bad])
        refused = wait_metric(server.url, "glasses_reload_total", 2, alias="production", tag=v[bad], result="refused")
        load.wait_for(lambda answers: False, 2)
    assert refused == 2  # both workers refused it
    assert all(a.status == 200 and a.model == v["a"] for a in load.answers)
    card = requests.get(f"{server.url}/model", timeout=30).json()
    assert card["tag"] == v["a"] and any(r["tag"] == v[bad] and reason in r["reason"] for r in card["refused"])
    assert f"refused {v[bad]} for production" in _log(server)


def test_psi_gauge_per_served_tag(live):
    server, _, v = live
    text = requests.get(f"{server.url}/metrics", timeout=30).text
    assert f'glasses_psi{{tag="{v["a"]}"}}' in text
    assert metric_sum(server.url, "glasses_verdicts_total", tag=v["a"]) > 100

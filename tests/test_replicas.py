"""Two service replicas on one store behind Debian's haproxy (with retries), all on 127.0.0.1.

Each replica has its own writable BENTOML_HOME (BentoML keeps per-server files there) whose models/
is the shared store's, and reads the shared alias file through GLASSES_REGISTRY_DIR, as the
Kubernetes Deployment does. Promote under load -> both replicas switch; kill -9 one replica -> no
client request fails (haproxy retries it on the other), except a response the kill cut after its
headers had left (no proxy can retry that; at most one per client thread). Skips when haproxy is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import requests

from _live import Load, converged, glasses_train
from _service import ServiceServer, register_models
from glasses.config import REGISTRY_DIR_ENV_VAR
from loadtests.server import HOST, free_port

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (scripts/setup.sh installs it as root)")
BOUND_S = 90.0

HAPROXY_CFG = """
global
    maxconn 256
    log stderr format raw local0 err
defaults
    mode http
    log global
    option httplog
    option log-separate-errors
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    retries 5
    option redispatch 1
    retry-on all-retryable-errors
    option http-buffer-request
    option http-server-close
frontend verdicts
    bind {host}:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /readyz
    timeout check 5s
    default-server inter 1s fall 2 rise 2
{servers}
"""


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    base = tmp_path_factory.mktemp("replicas")
    store = base / "store"
    a, b = register_models(store, [{"seed": 0, "promote": True}, {"seed": 1}])
    servers = []
    try:
        for i in range(2):
            home = base / f"home{i}"
            home.mkdir()
            (home / "models").symlink_to(store / "models", target_is_directory=True)
            servers.append(ServiceServer(home, env={REGISTRY_DIR_ENV_VAR: str(store)}))
        port = free_port()
        cfg = base / "haproxy.cfg"
        lines = "\n".join(f"    server r{i} {HOST}:{s.port} check" for i, s in enumerate(servers))
        cfg.write_text(HAPROXY_CFG.format(host=HOST, port=port, servers=lines))
        proxy = subprocess.Popen([HAPROXY, "-f", str(cfg), "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://{HOST}:{port}"
        _wait_ready(url, proxy)
        yield url, store, servers, (a, b), proxy
        proxy.terminate()
        proxy.wait(timeout=10)
    finally:
        for server in servers:
            server.stop()


def _wait_ready(url: str, proxy: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proxy.poll() is None, proxy.stderr.read().decode()[-2000:]
        try:
            if requests.get(url + "/readyz", timeout=2).status_code == 200:
                time.sleep(3)  # both servers seen up by the health checks (rise 2 x 1 s)
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise AssertionError("haproxy did not become ready")


def test_promote_under_load_switches_both_replicas(replicas):
    url, store, servers, (a, b), _ = replicas
    with Load(url) as load:
        assert load.wait_for(converged(a, 10), BOUND_S)
        glasses_train(store, "registry", "promote", b, "--note", "both replicas")
        assert load.wait_for(converged(b), BOUND_S)
    failed = [x for x in load.answers if x.status != 200]
    assert not failed, f"{len(failed)} of {len(load.answers)} failed: {failed[:3]}"
    for server in servers:  # each replica, asked directly
        assert requests.get(f"{server.url}/model", timeout=30).json()["tag"] == b


def test_killing_one_replica_fails_no_client_request(replicas):
    url, _, servers, (_, b), proxy = replicas
    with Load(url) as load:
        assert load.wait_for(lambda answers: len(answers) >= 20, BOUND_S)
        killed_time = time.monotonic()
        for proc in servers[1]._processes():  # kill -9 the whole replica: server and workers
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        killed_at = len(load.answers)
        assert load.wait_for(lambda answers: len(answers) >= killed_at + 60, BOUND_S)
    # A response whose headers had left the killed replica before its body cannot be retried by any
    # proxy: only those (in flight at the kill, cut mid-body, at most one per client thread) may fail.
    cut = [x for x in load.answers if x.status == 0 and x.sent < killed_time and "IncompleteRead" in x.error]
    failed = [x for x in load.answers if x.status != 200 and x not in cut]
    assert len(cut) <= len(load._threads), f"{len(cut)} responses cut mid-body by the kill: {cut[:3]}"
    if failed:
        proxy.terminate()
        pytest.fail(f"{len(failed)} of {len(load.answers)} client requests failed: {failed[:3]}\n"
                    f"{proxy.stderr.read().decode()[-3000:]}")
    assert {x.model for x in load.answers} == {b}

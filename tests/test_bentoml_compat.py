"""service/bentoml_compat.py: the pinned BentoML, and the exact shape of the internals it relies on.

Every test here is meant to fail, naming what changed, as soon as BentoML is upgraded.
"""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import bentoml
import pytest

from service import bentoml_compat as compat

REPO = Path(__file__).resolve().parent.parent


def test_installed_bentoml_is_the_pinned_one_everywhere():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "bentoml==" + compat.PINNED_VERSION in deps
    assert re.search(rf"^\s*- bentoml=={re.escape(compat.PINNED_VERSION)}\s*$",
                     (REPO / "bentofile.yaml").read_text(), re.M)
    assert bentoml.__version__ == compat.PINNED_VERSION


def test_another_version_is_refused_in_one_clear_message():
    with pytest.raises(compat.BentoMLVersionError) as info:
        compat.check_version("1.5.0")
    message = str(info.value)
    assert "bentoml 1.5.0 is installed" in message and f"bentoml=={compat.PINNED_VERSION}" in message
    assert "\n" not in message
    compat.check_version(compat.PINNED_VERSION)


def test_importing_the_batching_code_under_another_version_stops_there():
    code = "import bentoml; bentoml.__version__ = '9.9.9'; import service.batching"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("service.bentoml_compat.BentoMLVersionError: bentoml 9.9.9 is installed"), proc.stderr


def test_cork_dispatcher_has_the_constructor_and_parts_the_greedy_dispatcher_uses():
    params = list(inspect.signature(compat.CorkDispatcher.__init__).parameters)
    assert params == ["self", "max_latency_in_ms", "max_batch_size", "shared_sema", "fallback",
                      "get_batch_size", "batch_dim"]
    assert compat.CorkDispatcher.TICKET_INTERVAL > 0
    for name in ("controller", "outbound_call"):
        assert inspect.iscoroutinefunction(getattr(compat.CorkDispatcher, name)), name
    for name in ("_get_inputs", "shutdown", "__call__"):
        assert callable(getattr(compat.CorkDispatcher, name)), name
    sema = compat.NonBlockSema(1)
    cork = compat.CorkDispatcher(250, 8, shared_sema=sema, fallback=lambda: None, get_batch_size=len,
                                 batch_dim=(0, 0))
    assert (cork.max_latency, cork.max_batch_size, cork.batch_dim, cork.get_batch_size) == (0.25, 8, (0, 0), len)
    assert cork._sema is sema and len(cork._queue) == 0
    assert "_wake_event" in dir(type(cork)) and "_loop" in dir(type(cork))  # cached properties
    assert sema.acquire() and sema.is_locked() and not sema.acquire()
    sema.release()
    assert not sema.is_locked()


def test_server_context_has_the_metric_labels():
    for name in ("worker_index", "bento_version", "bento_name"):
        assert hasattr(compat.server_context, name), name


PROBE = """
import json, bentoml, numpy as np
from service import bentoml_compat as compat
from service.batching import GreedyDispatcher, batch_entry

@bentoml.service(name="probe")
class Probe:
    @bentoml.api(batchable=True, max_batch_size=4, max_latency_ms=100)
    def infer(self, x: np.ndarray) -> np.ndarray:
        return x

app = Probe.to_asgi()
factory = compat.api_factory(app, "infer")
before = type(compat.api_dispatchers(factory).get("infer")).__name__
entry = batch_entry(app, "infer")
print(json.dumps({
    "factory": type(factory).__name__, "before": before,
    "after": type(compat.api_dispatchers(factory)["infer"]).__name__,
    "entry": [entry.func.__name__, list(entry.args)],
    "batch_infer": list(__import__("inspect").signature(factory.batch_infer).parameters),
    "metrics": [type(factory.enable_metrics).__name__, hasattr(type(factory), "adaptive_batch_size_hist"),
                factory.service.name],
    "no_api": compat.api_factory(app, "nothing") is None,
}))
"""


def test_a_real_service_app_exposes_its_batching_factory_as_expected():
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found == {
        "factory": "ServiceAppFactory", "before": "CorkDispatcher", "after": "GreedyDispatcher",
        "entry": ["batch_infer", ["infer"]], "batch_infer": ["name", "input_args", "input_kwargs"],
        "metrics": ["bool", True, "probe"], "no_api": True,
    }


def test_model_store_at_points_the_store_at_a_directory(tmp_path):
    with compat.model_store_at(tmp_path / "models"):
        with bentoml.models.create("compat_probe") as model:
            Path(model.path, "weights.txt").write_text("x")
        assert [str(m.tag) for m in bentoml.models.list()] == [str(model.tag)]
    assert (tmp_path / "models" / "compat_probe" / model.tag.version / "weights.txt").exists()

"""Reusable helpers for tests, load tests and benchmarks that need a real model and a real server.

    home = tmp / "bentoml"
    tag = register_model(home, seed=0)                  # a real Keras CNN in a private BentoML store
    with start_server(home) as server:                   # `bentoml serve` subprocess on a free port
        requests.post(f"{server.url}/predict", files={"image": open("face.jpg", "rb")})

`register_model` runs in a subprocess because BentoML reads BENTOML_HOME once per process; the
server is `bentoml serve` run in the repository root (bentofile.yaml), exactly as users start it.
Also usable from the shell: `python tests/_service.py register --home DIR [--seed N]`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from glasses.config import CLASS_MAP, IMAGE_SIZE, MODEL_NAME  # noqa: E402
from loadtests.server import free_port  # noqa: E402,F401  (re-exported for the test modules)

BENTOML_BIN = Path(sys.executable).parent / "bentoml"
READY_TIMEOUT = 240.0  # seconds; TF import + model load + warm-up on a loaded 2-core machine


# --- models -------------------------------------------------------------------------------------
def build_model(seed: int = 0, image_size: int = IMAGE_SIZE) -> Any:
    """The paper's CNN ladder (3 x conv/pool, dense 128, sigmoid) with seeded random weights.

    The output layer is scaled up so that probabilities spread over (0, 1) instead of sitting at 0.5,
    which makes parity and verdict checks meaningful for an untrained model.
    """
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((image_size, image_size, 3)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([kernel * 40.0, bias - 0.5])
    return model


def _register_here(seed: int, threshold: float, image_size: int, promote: bool, metrics: dict | None) -> dict:
    """Create a model version in the current process's BentoML store (see `register_model`)."""
    import bentoml

    from glasses import preprocessing, registry

    model = build_model(seed, image_size)
    metadata = {
        "metrics": metrics if metrics is not None else {"accuracy": 0.5, "roc_auc": 0.5},
        "threshold": float(threshold),
        "class_map": dict(CLASS_MAP),
        "image_size": image_size,
        "preprocessing_version": preprocessing.PREPROCESSING_VERSION,
        "data_source": "synthetic:tests",
        "data_fingerprint": f"test-seed-{seed}",
        "manifest_hash": f"test-seed-{seed}",
        "hyperparameters": {"architecture": "paper-cnn-random", "seed": seed},
        "profile": "test",
        "objective": "val_accuracy",
    }
    with bentoml.models.create(MODEL_NAME, labels={"stage": "test"}, metadata=metadata) as ctx:
        model.save(ctx.path_of("model.keras"))
    tag = str(ctx.tag)
    if promote:
        registry.promote(tag)
    stored = bentoml.models.get(tag)
    return {"tag": tag, "model_file": stored.path_of("model.keras")}


def register_model(
    home: Path,
    *,
    seed: int = 0,
    threshold: float = 0.5,
    image_size: int = IMAGE_SIZE,
    promote: bool = True,
    metrics: dict | None = None,
) -> str:
    """Register a seeded random CNN as `glasses_classifier:<version>` in the store at `home`; its tag.

    Runs in a subprocess with BENTOML_HOME=home (~10 s: TensorFlow import). The Keras file is then at
    `model_file(home, tag)`.
    """
    home.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "register", "--home", str(home), "--seed", str(seed),
           "--threshold", str(threshold), "--image-size", str(image_size)]
    if not promote:
        cmd.append("--no-promote")
    if metrics is not None:
        cmd += ["--metrics", json.dumps(metrics)]
    out = subprocess.run(cmd, env=_env(home), capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"registering a test model failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["tag"]


def model_file(home: Path, tag: str) -> Path:
    """Where the registered model's Keras file lives in the store at `home`."""
    name, version = tag.split(":")
    return home / "models" / name / version / "model.keras"


# --- server -------------------------------------------------------------------------------------
def _env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True",
           "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("GLASSES_MODEL", None)
    env.update(extra or {})
    return env


@dataclass
class ServiceServer:
    """A running `bentoml serve` subprocess (its own process group) on 127.0.0.1."""

    proc: subprocess.Popen
    port: int
    home: Path
    log_path: Path
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.port}"

    def log(self, tail: int = 4000) -> str:
        """The last `tail` characters of the server's combined stdout/stderr."""
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def is_ready(self) -> bool:
        """GET /readyz answers 200."""
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=5) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Block until /readyz is 200; RuntimeError with the log tail if the server dies or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with {self.proc.returncode}:\n{self.log()}")
            if self.is_ready():
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"bentoml serve not ready after {timeout:.0f} s:\n{self.log()}")

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server: SIGTERM to `bentoml serve` (it stops its workers), SIGKILL what is left.

        BentoML's workers run in their own sessions, so they are collected (by pid) before the
        arbiter is signalled, and killed individually if they outlive it.
        """
        import psutil

        if self.proc.poll() is not None:
            return
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        _, alive = psutil.wait_procs(children, timeout=5)
        for child in alive:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass

    def __enter__(self) -> ServiceServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    home: Path,
    *,
    env: dict[str, str] | None = None,
    port: int | None = None,
    args: tuple[str, ...] = (),
    wait: bool = True,
    timeout: float = READY_TIMEOUT,
) -> ServiceServer:
    """Start `bentoml serve` in the repository root against the store at `home`; wait for /readyz.

    `env` adds variables (e.g. {"GLASSES_MODEL": tag}); `args` adds `bentoml serve` options.
    Use as a context manager or call `.stop()`.
    """
    port = port or free_port()
    log_path = Path(tempfile.mkstemp(prefix="glasses-serve-", suffix=".log")[1])
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(BENTOML_BIN), "serve", "--host", "127.0.0.1", "--port", str(port), *args],
            cwd=REPO_ROOT,
            env=_env(home, env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServiceServer(proc, port, home, log_path)
    if wait:
        try:
            server.wait_ready(timeout)
        except BaseException:
            server.stop()
            raise
    return server


# --- pytest: one model + one server per session --------------------------------------------------
_SHARED: ServiceServer | None = None


def shared_server(request: Any, tmp_path_factory: Any) -> ServiceServer:
    """The session's server (started on first use, stopped at session end) over a seed-0 test model.

    Call it from a module- or session-scoped fixture: `return shared_server(request, tmp_path_factory)`.
    Every module asking for it shares the one server, so the ~40 s of registering a model and
    starting `bentoml serve` is paid once per pytest run. Tests must leave it healthy.
    """
    global _SHARED
    if _SHARED is None or _SHARED.proc.poll() is not None:
        home = tmp_path_factory.mktemp("service-store") / "bentoml"
        register_model(home, seed=0)
        _SHARED = start_server(home)
        request.config.add_cleanup(_SHARED.stop)
    return _SHARED


# --- command line (used by register_model's subprocess) -----------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="test helpers for the prediction service")
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("register", help="register a seeded random CNN into a BentoML store")
    reg.add_argument("--home", type=Path, required=True)
    reg.add_argument("--seed", type=int, default=0)
    reg.add_argument("--threshold", type=float, default=0.5)
    reg.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    reg.add_argument("--no-promote", action="store_true")
    reg.add_argument("--metrics", type=json.loads, default=None)
    args = parser.parse_args(argv)
    if os.environ.get("BENTOML_HOME") != str(args.home):  # bentoml reads it once, at import
        os.execve(sys.executable, [sys.executable, *sys.argv], _env(args.home))
    info = _register_here(args.seed, args.threshold, args.image_size, not args.no_promote, args.metrics)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())

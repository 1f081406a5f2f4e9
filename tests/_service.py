"""Reusable helpers for tests, load tests and benchmarks that need a real model and a real server.

    home = tmp / "bentoml"
    tag = register_model(home, seed=0)                  # a real Keras CNN in a private BentoML store
    with ServiceServer(home) as server:                  # `bentoml serve` subprocess on a free port
        requests.post(f"{server.url}/predict", files={"image": open("face.jpg", "rb")})

`register_model` runs in a subprocess because BentoML reads BENTOML_HOME once per process; the
server is `bentoml serve` run in the repository root (bentofile.yaml), exactly as users start it.
Also usable from the shell: `python tests/_service.py register --home DIR [--seed N]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from glasses.config import CLASS_MAP, IMAGE_SIZE, LITERT_MODEL_FILE, MODEL_FILE  # noqa: E402
from loadtests.server import QUIET_ENV, Server, bentoml_command, free_port  # noqa: E402  (free_port re-exported)

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


VARIANTS = ("normal", "corrupt", "mismatched", "old-preprocessing")


def _register_here(seed: int, threshold: float, image_size: int, promote: bool, metrics: dict | None,
                   variant: str = "normal") -> dict:
    """Create a model version in the current process's BentoML store (see `register_model`).

    `variant`: "corrupt" truncates the stored model.keras, "mismatched" records a parity probe the
    model does not reproduce (another model's file), "old-preprocessing" records another contract.
    """
    import numpy as np

    from glasses import monitoring, preprocessing, registry
    from training import convert

    model = build_model(seed, image_size)
    conversion = convert.convert_checked(model, convert.generated_check_images(image_size))
    probe = np.asarray(model(monitoring.probe_pixels(image_size).astype("float32") / 255.0)).reshape(-1)
    if variant == "mismatched":
        probe = np.asarray(build_model(seed + 1000, image_size)(
            monitoring.probe_pixels(image_size).astype("float32") / 255.0)).reshape(-1)
    metadata = {
        "metrics": metrics if metrics is not None else {"accuracy": 0.5, "roc_auc": 0.5},
        "threshold": float(threshold),
        "class_map": dict(CLASS_MAP),
        "image_size": image_size,
        "preprocessing_version": preprocessing.PREPROCESSING_VERSION,
        "data_source": "synthetic:tests",
        "data_fingerprint": f"test-seed-{seed}",
        "split_manifest_hash": f"test-seed-{seed}",
        "hyperparameters": {"architecture": "paper-cnn-random", "seed": seed},
        "profile": "test",
        "objective": "val_accuracy",
        "parity_probe": [float(p) for p in probe],
        "reference_distribution": {"counts": monitoring.reference_histogram(_reference_probabilities(model, image_size)),
                                   "split": "test", "photos": 48},
        "litert": conversion.metadata(),
    }
    if not conversion.accepted:
        raise RuntimeError(conversion.reason)
    if variant == "old-preprocessing":
        metadata["preprocessing_version"] = "an-older-contract"
    tag = registry.save_version(model, metadata=metadata, labels={"stage": "test", "variant": variant},
                                litert=conversion.tflite)
    if variant == "corrupt":  # both runtimes' files, whichever the service loads
        for name in (MODEL_FILE, LITERT_MODEL_FILE):
            path = Path(registry.get_model(tag).path_of(name))
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    if promote:
        registry.promote(tag)
    return {"tag": tag, "model_file": registry.get_model(tag).path_of(MODEL_FILE)}


def _reference_probabilities(model: Any, image_size: int) -> Any:
    """P(glasses) of the test model on 48 synthetic faces (its "test split" for the drift reference)."""
    import numpy as np

    from _fixtures import face_image

    faces = [np.asarray(face_image(seed, seed % 3 == 0, image_size)) for seed in range(48)]
    return np.asarray(model(np.stack(faces).astype("float32") / 255.0)).reshape(-1)


def register_models(home: Path, specs: list[dict]) -> list[str]:
    """Register several test versions in one subprocess (one TensorFlow import); their tags in order.

    Each spec takes the keyword arguments of `register_model` ("seed", "threshold", "image_size",
    "promote", "metrics") and "variant" (see `_register_here`); promote defaults to False here.
    """
    home.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "register", "--home", str(home), "--specs", json.dumps(specs)]
    out = subprocess.run(cmd, env=_env(home), capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"registering test models failed:\n{out.stderr[-3000:]}")
    return [json.loads(line)["tag"] for line in out.stdout.strip().splitlines()[-len(specs):]]


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
    `model_file(home, tag)`, its checked LiteRT conversion beside it (training/convert.py), so servers
    on it run LiteRT unless GLASSES_RUNTIME=tf.
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
    return home / "models" / name / version / MODEL_FILE


# --- server -------------------------------------------------------------------------------------
def _env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **QUIET_ENV, "BENTOML_HOME": str(home), "PYTHONPATH": str(REPO_ROOT)}
    env.pop("GLASSES_MODEL", None)
    env.update(extra or {})
    return env


class ServiceServer(Server):
    """`bentoml serve` in the repository root (bentofile.yaml) over the store at `home`, ready on return.

    `env` adds variables (e.g. {"GLASSES_MODEL": tag}); `args` adds `bentoml serve` options.
    Start/ready/stop is loadtests.server.Server, the one used by the load tests and benchmarks.
    """

    def __init__(self, home: Path, *, env: dict[str, str] | None = None, port: int | None = None,
                 args: tuple[str, ...] = (), timeout: float = READY_TIMEOUT):
        self.home = home
        port = port or free_port()
        super().__init__(bentoml_command(port, args), port, env=_env(home, env), timeout=timeout)


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
        _SHARED = ServiceServer(home)
        request.config.add_cleanup(_SHARED.stop)
    return _SHARED


_BUNDLED: ServiceServer | None = None


def bundled_server(request: Any, tmp_path_factory: Any) -> ServiceServer:
    """A session server over an empty store, so it imports and serves the bundled default model
    (models/glasses_classifier.bentomodel, trained on real photos), as `make serve` does on a fresh machine."""
    global _BUNDLED
    if _BUNDLED is None or _BUNDLED.proc.poll() is not None:
        home = tmp_path_factory.mktemp("bundled-store") / "bentoml"
        home.mkdir(parents=True)
        _BUNDLED = ServiceServer(home)
        request.config.add_cleanup(_BUNDLED.stop)
    return _BUNDLED


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
    reg.add_argument("--specs", type=json.loads, default=None, help="JSON list of versions (register_models)")
    args = parser.parse_args(argv)
    if os.environ.get("BENTOML_HOME") != str(args.home):  # bentoml reads it once, at import
        os.execve(sys.executable, [sys.executable, *sys.argv], _env(args.home))
    for spec in args.specs or [{"seed": args.seed, "threshold": args.threshold, "image_size": args.image_size,
                                "promote": not args.no_promote, "metrics": args.metrics}]:
        info = _register_here(spec.get("seed", 0), spec.get("threshold", 0.5), spec.get("image_size", IMAGE_SIZE),
                              spec.get("promote", False), spec.get("metrics"), spec.get("variant", "normal"))
        print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())

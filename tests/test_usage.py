"""Every entry point, used wrongly, answers in exactly one stderr line and a non-zero exit, on any CPU.

Run as a user would, in subprocesses with TensorFlow's oneDNN path forced on
(TF_ENABLE_ONEDNN_OPTS=1 makes TensorFlow print its absl lines at import on every x86 CPU, as it
does by default on Intel ones) and without the TF_CPP_MIN_LOG_LEVEL the other tests set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _training import REPO
from loadtests.server import free_port

BUNDLED = REPO / "models" / "glasses_classifier.bentomodel"


def user_env(home: Path, **extra: str) -> dict[str, str]:
    """A user's environment: no quieting variables of ours, oneDNN forced on, a private store."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KERASTUNER_", "TF_CPP_", "GLASSES_"))}
    env.update({"TF_ENABLE_ONEDNN_OPTS": "1", "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True",
                "PYTHONPATH": str(REPO)})
    env.update(extra)
    return env


def run(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def assert_one_line(result: subprocess.CompletedProcess, prefix: str, contains: str, code: int = 2) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(prefix) and contains in lines[0], lines[0]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A store holding the bundled model (imported through the CLI, as a user would)."""
    home = tmp_path_factory.mktemp("usage") / "bentoml"
    home.mkdir()
    done = run(["-m", "training", "registry", "import", str(BUNDLED)], user_env(home))
    assert done.returncode == 0 and done.stderr == "", done.stderr[-3000:]
    return home


@pytest.fixture(scope="module")
def tag(home) -> str:
    rows = json.loads(run(["-m", "training", "registry", "list", "--json"], user_env(home)).stdout)
    return rows[0]["tag"]


def test_importing_tensorflow_through_our_packages_is_silent_unless_verbose(tmp_path) -> None:
    code = "import glasses, keras, tensorflow as tf; print(float(tf.reduce_sum(tf.ones(3))))"
    quiet = run(["-c", code], user_env(tmp_path))
    assert quiet.returncode == 0 and quiet.stdout.strip() == "3.0"
    assert quiet.stderr == "", quiet.stderr
    loud = run(["-c", code], user_env(tmp_path, GLASSES_VERBOSE="1"))
    assert "oneDNN custom operations are on" in loud.stderr  # the check above can fail


@pytest.mark.parametrize("args, contains", [
    (["tune", "--manifest", "README.md"], "is not a split manifest (not JSON"),
    (["tune", "--manifest", "{empty}"], "is not a split manifest (no 'fingerprint')"),
    (["tune", "--manifest", "/nonexistent/manifest.json"], "does not exist"),
    (["evaluate", "--model", "README.md", "--manifest", "{empty}"], "is not a Keras model file"),
    (["evaluate", "--model", "/nonexistent.keras", "--manifest", "{empty}"], "does not exist"),
    (["compare", "--source", "folders:/nonexistent-dir", "a:b", "c:d"], "folder not found"),
    (["prepare", "--source", "folders:/nonexistent-dir"], "folder not found"),
    (["prepare", "--source", "nonsense"], "unknown source"),
    (["register", "--run-dir", "/nonexistent-run"], "does not exist"),
    (["registry", "promote", "glasses_classifier:nope"], "no model 'glasses_classifier:nope'"),
    (["registry", "show", "glasses_classifier:nope"], "no model 'glasses_classifier:nope'"),
    (["registry", "import", "README.md"], "not a valid .bentomodel archive"),
])
def test_glasses_train_wrong_usage_is_one_line_exit_2(args, contains, tmp_path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    args = [str(empty) if a == "{empty}" else a for a in args]
    result = run(["-m", "training", *args], user_env(tmp_path / "bentoml"))
    assert_one_line(result, f"glasses-train {args[0]}: error:", contains)


def test_registry_refusals_with_a_real_version(home, tag, tmp_path) -> None:
    env = user_env(home)
    same = run(["-m", "training", "compare", "--source", f"folders:{tmp_path}", tag, tag], env)
    assert_one_line(same, "glasses-train compare: error:", "compared with itself")
    target = tmp_path / "copy.bentomodel"
    assert run(["-m", "training", "registry", "export", tag, str(target)], env).returncode == 0
    again = run(["-m", "training", "registry", "export", tag, str(target)], env)
    assert_one_line(again, "glasses-train registry: error:", "already exists")
    present = run(["-m", "training", "registry", "import", str(target)], env)
    assert present.returncode == 0 and "already in the store" in present.stdout and present.stderr == ""


def test_help_and_version_speak_for_themselves(tmp_path) -> None:
    env = user_env(tmp_path)
    registry_help = run(["-m", "training", "registry", "--help"], env).stdout
    assert "manage the model versions in the store" in registry_help and "quality gate" not in registry_help
    assert "quality gate" in run(["-m", "training", "register", "--help"], env).stdout
    version = run(["-m", "training", "--version"], env)
    assert version.returncode == 0 and version.stdout.startswith("glasses-train ")


def test_client_takes_folders_and_refuses_missing_paths_in_one_line(tmp_path) -> None:
    env = user_env(tmp_path)
    missing = run(["-m", "service.client", str(tmp_path / "nope.jpg")], env)
    assert_one_line(missing, "error:", "no such file or folder")
    (tmp_path / "empty").mkdir()
    empty = run(["-m", "service.client", str(tmp_path / "empty")], env)
    assert_one_line(empty, "error:", "no image files")
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "face.png")
    port = free_port()  # nobody listens there: the folder was expanded, then the service is unreachable
    down = run(["-m", "service.client", str(tmp_path), "--url", f"http://127.0.0.1:{port}"], env)
    assert_one_line(down, "error:", "cannot reach the service")


def test_loadtests_refuse_a_corrupt_image_up_front(tmp_path) -> None:
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 64)).save(images / "good.jpg")
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    result = run(["-m", "loadtests", "--images", str(images)], user_env(tmp_path / "bentoml"))
    assert_one_line(result, "loadtests:", "broken.jpg")


def test_service_with_an_unknown_pinned_model_stops_in_one_line(home) -> None:
    bentoml = str(Path(sys.executable).parent / "bentoml")
    result = subprocess.run([bentoml, "serve", "--host", "127.0.0.1", "--port", str(free_port())], cwd=REPO,
                            env=user_env(home, GLASSES_MODEL="glasses_classifier:nope"), capture_output=True,
                            text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "GLASSES_MODEL=glasses_classifier:nope" in lines[0], result.stderr[-3000:]


def test_litert_interpreter_is_silent_unless_verbose(tmp_path) -> None:
    """LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." once per process when its
    first interpreter allocates: the loader hides it like TensorFlow's import lines, GLASSES_VERBOSE=1 shows it."""
    import tarfile

    with tarfile.open(BUNDLED) as tar:
        (tmp_path / "model.tflite").write_bytes(tar.extractfile("./model.tflite").read())
    code = ("import numpy as np; from glasses.runtimes import LiteRTClassifier; "
            f"c = LiteRTClassifier({str(tmp_path / 'model.tflite')!r}, 128); c.warm_up((1, 3)); "
            "print(c(np.zeros((2, 128, 128, 3), np.uint8)).shape)")
    quiet = run(["-c", code], user_env(tmp_path))
    assert quiet.returncode == 0 and quiet.stdout.strip() == "(2,)", quiet.stderr
    assert quiet.stderr == "", quiet.stderr
    loud = run(["-c", code], user_env(tmp_path, GLASSES_VERBOSE="1"))
    assert "XNNPACK delegate" in loud.stderr, loud.stderr  # the check above can fail

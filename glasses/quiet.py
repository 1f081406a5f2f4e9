"""Keep TensorFlow's log lines off the terminal unless asked for (`GLASSES_VERBOSE=1` or `--verbose`).

TensorFlow's C++ core writes absl lines to stderr while it loads (oneDNN, CPU features, "All log
messages before absl::InitializeLog()"); which lines depends on the CPU, and `TF_CPP_MIN_LOG_LEVEL`
does not hide them because they come before logging is set up. So, once per process, `install()`:

- sets `TF_CPP_MIN_LOG_LEVEL` (later C++ lines: XLA, device set-up) unless the caller set it;
- adds an import hook that points file descriptor 2 at /dev/null while the heavy ML packages load
  (stderr written by any thread in those seconds is lost; Python errors raised by the import are not);
- lowers the Python loggers and warnings of those packages to errors.

LiteRT also prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." when its first interpreter
allocates: glasses.runtimes.LiteRTClassifier builds and allocates inside `muted_stderr()` (a few ms).

Importing `glasses` calls `install()`, so every entry point of this repository is quiet by default.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import sys
import threading
import warnings
from collections.abc import Iterator

VERBOSE_ENV = "GLASSES_VERBOSE"
# Top-level packages whose import loads TensorFlow's C++ core (or prints while loading).
NOISY_PACKAGES = frozenset({"tensorflow", "keras", "keras_tuner", "tensorboard", "tf_keras", "ai_edge_litert"})
NOISY_LOGGERS = ("tensorflow", "absl", "keras", "keras_tuner", "h5py")

_lock = threading.RLock()
_depth = 0
_saved_fd: int | None = None
_log_level_set = False  # True when install() chose TF_CPP_MIN_LOG_LEVEL (so --verbose may take it back)


def verbose() -> bool:
    """True when the user asked to see the libraries' own log lines."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def set_verbose(on: bool) -> None:
    """Make this process (and its children) verbose or quiet; call before TensorFlow is imported."""
    global _log_level_set
    os.environ[VERBOSE_ENV] = "1" if on else "0"
    if on and _log_level_set:
        os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        _log_level_set = False


@contextlib.contextmanager
def muted_stderr() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the duration (re-entrant; a no-op when verbose)."""
    global _depth, _saved_fd
    if verbose():
        yield
        return
    with _lock:
        if _depth == 0:
            sys.stderr.flush()
            _saved_fd = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved_fd is not None:
                os.dup2(_saved_fd, 2)
                os.close(_saved_fd)
                _saved_fd = None


class _MutedLoader(importlib.abc.Loader):
    """Runs the real loader with stderr muted, then quiets the package's Python loggers."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec):  # noqa: ANN001, ANN201 (importlib protocol)
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:  # noqa: ANN001
        with muted_stderr():
            self._loader.exec_module(module)
        quiet_python_logging()

    def __getattr__(self, name: str):  # noqa: ANN204 (resources, get_code, ... of the real loader)
        return getattr(self._loader, name)


class _MutedFinder(importlib.abc.MetaPathFinder):
    """Finds the noisy top-level packages with the normal machinery and wraps their loader."""

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001, ANN201
        if fullname not in NOISY_PACKAGES or verbose():
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _MutedLoader(spec.loader)
        return spec


def quiet_python_logging() -> None:
    """The ML packages' Python loggers and warnings down to errors (unless verbose)."""
    if verbose():
        return
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(tensorflow|keras|keras_tuner|tf_keras|absl)(\.|$)")


def install() -> None:
    """Quiet this process from now on (idempotent; nothing happens when verbose)."""
    global _log_level_set
    if verbose():
        return
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
        _log_level_set = True
    if not any(isinstance(f, _MutedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MutedFinder())
    if any(name in sys.modules for name in NOISY_PACKAGES):  # imported before us: too late to mute the load
        quiet_python_logging()

"""Start an HTTP server in a subprocess on 127.0.0.1, wait until it is ready, measure it, stop it.

Used by the load-test runner and the benchmark for the BentoML service and the naive baseline.
The server runs in its own process group so stopping it also stops the workers it forked.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from glasses.config import REPO_ROOT

HOST = "127.0.0.1"
# For every server and CLI subprocess this repository starts: no usage tracking, less TF noise.
QUIET_ENV = {"BENTOML_DO_NOT_TRACK": "True", "TF_CPP_MIN_LOG_LEVEL": "2"}


class ServerError(RuntimeError):
    """The server did not start or become ready; the message says why (with its last log lines)."""


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (bind to port 0)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def bentoml_command(port: int, args: tuple[str, ...] = ()) -> list[str]:
    """`bentoml serve` of the repository's bentofile.yaml on 127.0.0.1:port (plus extra options)."""
    return [sys.executable, "-m", "bentoml", "serve", "--host", HOST, "--port", str(port), *args]


class Server:
    """A server subprocess, started and ready on construction; use as a context manager or call stop().

    `env` is added to this process's environment (with QUIET_ENV); a value of None unsets a variable.
    """

    def __init__(self, command: list[str], port: int, env: dict[str, str | None] | None = None,
                 cwd: Path = REPO_ROOT, ready_path: str = "/readyz", timeout: float = 180.0):
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.command = command
        environ = {**os.environ, **QUIET_ENV, **(env or {})}
        self._log = tempfile.NamedTemporaryFile(prefix="glasses-server-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(command, cwd=cwd, env={k: v for k, v in environ.items() if v is not None},
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready(ready_path, timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"server exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise ServerError(f"server not ready at {self.url}{path} after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's combined stdout/stderr."""
        text = Path(self._log.name).read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss_bytes(self) -> int:
        """Resident memory of the server and all its worker processes."""
        total = 0
        for proc in self._processes():
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by the server and its live worker processes."""
        total = 0.0
        for proc in self._processes():
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the server, SIGKILL whatever is left after `timeout` seconds; idempotent.

        BentoML's workers run in sessions of their own, so the process tree is collected first and
        every survivor is killed by pid, not just the server's process group.
        """
        tree = self._processes()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        try:  # whatever is left of the group (a hung root, orphaned workers)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        _, alive = psutil.wait_procs(tree[1:], timeout=5)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

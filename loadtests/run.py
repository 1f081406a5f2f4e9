"""Load-test runner: serve (or target --host), run locust headless in a subprocess, check the SLOs.

    python -m loadtests                          # short profile (~20 s of load) against a fresh local server
    python -m loadtests --profile soak           # 10 minutes; also reports server memory at start and end
    python -m loadtests --host http://127.0.0.1:3000 --images ../shared/data/celeba-glasses

Without --host it starts `bentoml serve` (the repository's bentofile.yaml) on 127.0.0.1 on a free port,
serving whatever the registry at $BENTOML_HOME resolves to. Reports (locust CSV + HTML) go to
artifacts/loadtests/reports/<profile>-<time>/. Exit code: 0 SLOs met, 1 an SLO breached, 2 could not run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from glasses.config import LOADTEST_DIR, LOADTEST_PROFILES, REPO_ROOT
from loadtests.images import check_uploads, load_images
from loadtests.server import Server, ServerError, bentoml_command, free_port
from loadtests.slo import SLO, EndpointStats, check, format_table, read_stats

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


@dataclass
class LocustRun:
    """What one headless locust subprocess produced."""

    returncode: int
    csv_prefix: Path
    generator: dict = field(default_factory=dict)  # the load generator's own CPU use (cpu_s, wall_s, cores)

    @property
    def stats(self) -> list[EndpointStats]:
        return read_stats(Path(f"{self.csv_prefix}_stats.csv"))


def run_locust(host: str, out_dir: Path, name: str, users: int, spawn_rate: float, run_time: float,
               think_ms: float, images: Path | None = None, user_classes: tuple[str, ...] = (),
               html: bool = True, stop_timeout: float = 30.0, predict_answer: str = "object") -> LocustRun:
    """Run locust headless in a subprocess (gevent and TensorFlow must not share a process).

    `predict_answer`: the shape of a correct /predict answer from this server (loadtests/answers.py).

    At the time limit users finish their in-flight request (up to `stop_timeout` s) instead of being
    killed: those requests are counted, and the server is left with no backlog of abandoned work.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / name
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
           "--host", host, "-u", str(users), "-r", str(spawn_rate), "-t", f"{run_time:g}s",
           "--csv", str(prefix), "--think-ms", str(think_ms), "--stop-timeout", f"{stop_timeout:g}",
           "--predict-answer", predict_answer, "--loglevel", "WARNING"]
    if html:
        cmd += ["--html", f"{prefix}.html"]
    if images:
        cmd += ["--images", str(images)]
    cmd += list(user_classes)
    with open(f"{prefix}.log", "w") as log:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                              timeout=run_time + stop_timeout + 120)
    generator_file = Path(f"{prefix}_generator.json")
    generator = json.loads(generator_file.read_text()) if generator_file.exists() else {}
    return LocustRun(proc.returncode, prefix, generator)


class MemorySampler:
    """Samples a server's RSS every `interval` seconds in a background thread."""

    def __init__(self, server: Server, interval: float = 5.0):
        self.server, self.interval = server, interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - start, self.server.rss_bytes()))
            self._stop.wait(self.interval)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((self.samples[-1][0] + self.interval if self.samples else 0.0, self.server.rss_bytes()))


def memory_report(samples: list[tuple[float, int]], warmup_s: float) -> dict:
    """RSS at the start of steady load (first sample after `warmup_s`), at the end, peak, and growth."""
    steady = [s for s in samples if s[0] >= warmup_s] or samples
    start, end = steady[0][1], samples[-1][1]
    mid = steady[len(steady) // 2][1]  # a leak keeps growing in the second half; a warming cache levels off
    return {
        "rss_ready_mb": samples[0][1] / 2**20,
        "rss_start_mb": start / 2**20,
        "rss_mid_mb": mid / 2**20,
        "rss_end_mb": end / 2**20,
        "rss_peak_mb": max(s[1] for s in samples) / 2**20,
        "growth": (end - start) / start if start else 0.0,
        "growth_second_half": (end - mid) / mid if mid else 0.0,
        "samples": [(round(t, 1), round(rss / 2**20, 1)) for t, rss in samples],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(LOADTEST_PROFILES), default="short")
    parser.add_argument("--host", help="target this running service instead of starting one (e.g. http://127.0.0.1:3000)")
    parser.add_argument("--images", type=Path, help="folder of images to upload (default: generated JPEG + PNG set)")
    parser.add_argument("--users", type=int, help="override the profile's simulated users")
    parser.add_argument("--run-time", type=float, help="override the profile's load duration (seconds)")
    parser.add_argument("--p95-ms", type=float, help="override the profile's p95 bound")
    parser.add_argument("--p99-ms", type=float, help="override the profile's p99 bound")
    parser.add_argument("--out", type=Path, help="report folder (default artifacts/loadtests/reports/<profile>-<time>)")
    return parser.parse_args(argv)


def memory_breaches(memory: dict | None, profile: dict, name: str, out: Path) -> list[str]:
    """Print the server's memory over the run (saved as NAME_memory.json) and return a breach of the
    profile's memory-growth limit, if any; without a measured server, say the limit went unchecked."""
    if memory:
        print("server RSS: ready {rss_ready_mb:.0f} MB, start of load {rss_start_mb:.0f} MB, middle {rss_mid_mb:.0f} MB, "
              "end {rss_end_mb:.0f} MB, peak {rss_peak_mb:.0f} MB; growth {growth:+.1%} "
              "({growth_second_half:+.1%} in the second half)".format(**memory))
        (out / f"{name}_memory.json").write_text(json.dumps(memory, indent=1))
        limit = profile.get("max_rss_growth")
        if limit is not None and memory["growth"] > limit:
            return [f"server memory grew {memory['growth']:+.1%} during the run (limit {limit:+.0%})"]
    elif profile.get("max_rss_growth") is not None:
        print(f"server memory: not checked (the {name} profile's memory-growth limit needs a server this "
              "runner starts; --host targets one it cannot measure)")
    return []


def main(argv: list[str] | None = None) -> int:
    """Run one load profile (starting the service unless --host) and check its SLO; 0 met, 1 breached, 2 error."""
    args = parse_args(argv)
    profile = dict(LOADTEST_PROFILES[args.profile])
    for key in ("users", "run_time", "p95_ms", "p99_ms"):
        if getattr(args, key) is not None:
            profile[key] = getattr(args, key)
    if args.images:
        try:  # a folder the locust users would upload: every file checked now, as the service decodes it
            check_uploads(load_images(args.images))
        except (FileNotFoundError, ValueError) as exc:
            print(f"loadtests: {exc}", file=sys.stderr)
            return 2
    out = args.out or LOADTEST_DIR / "reports" / f"{args.profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    slo = SLO(p95_ms=profile["p95_ms"], p99_ms=profile["p99_ms"])

    server = None
    try:
        if args.host:
            host = args.host.rstrip("/")
        else:
            port = free_port()
            print(f"loadtests: starting the service on 127.0.0.1:{port} ...", flush=True)
            server = Server(bentoml_command(port), port)
            host = server.url
        print(f"loadtests: profile {args.profile}: {profile['users']} users for {profile['run_time']:g}s "
              f"against {host}", flush=True)
        kwargs = dict(users=profile["users"], spawn_rate=profile["spawn_rate"], run_time=profile["run_time"],
                      think_ms=profile["think_ms"], images=args.images)
        if server:
            with MemorySampler(server, interval=min(10.0, profile["run_time"] / 4)) as sampler:
                result = run_locust(host, out, args.profile, **kwargs)
            memory = memory_report(sampler.samples, warmup_s=min(30.0, profile["run_time"] / 4))
        else:
            result = run_locust(host, out, args.profile, **kwargs)
            memory = None
        stats = result.stats
    except ServerError as exc:
        print(f"loadtests: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        print(f"loadtests: {exc}", file=sys.stderr)
        return 2
    finally:
        if server:
            server.stop()

    print(format_table(stats))
    breaches = check(stats, slo)
    if result.returncode != 0 and not breaches:
        breaches.append(f"locust exited with code {result.returncode} (see {result.csv_prefix}.log)")
    if result.generator:
        print(f"load generator CPU: {result.generator['cores']:.2f} cores over {result.generator['wall_s']:.0f}s")
    breaches += memory_breaches(memory, profile, args.profile, out)
    for breach in breaches:
        print(f"SLO BREACHED: {breach}")
    print(f"SLO: {'breached' if breaches else 'met'} (p95 <= {slo.p95_ms:g} ms, p99 <= {slo.p99_ms:g} ms, "
          f"no failures); reports in {out}")
    return 1 if breaches else 0

"""Swap benchmark: what a live promotion costs the requests in flight, against a steady run.

    python -m loadtests.swap [--workers 2] [--users 8] [--steady 20] [--swaps 3] [--json]

In one run, on the same machine, model and images (generated 178x218 JPEGs, loadtests/images.py):
1. two versions of the bundled model (same weights, so each load costs what a real one does) in a
   temporary store; the real `bentoml serve` with `--workers` workers follows `production`;
2. steady: `--users` threads POST /predict back to back for `--steady` seconds: p50 / p99 latency;
3. swaps: under the same load, `registry.promote` the other version, `--swaps` times, 15 s apart.
   Per swap: the time from the alias write to the first answer from the new version and to the last
   answer from the old one (= every worker switched), the p50 / p99 latency of the requests sent in
   that window plus 2 s (the requests in flight during the swap), and failures;
4. the CPU, cores and load average before and after (other work on the machine skews every figure).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

from glasses.config import BUNDLED_MODEL_FILE, LOADTEST_DIR, MODEL_NAME
from glasses.machine import banner, describe
from loadtests.images import generate_images, load_images
from loadtests.server import Server, bentoml_command, free_port


def two_versions(home: Path) -> tuple[str, str]:
    """The bundled model twice in the store at `home` (the second a copy of its files under a new tag)."""
    os.environ["BENTOML_HOME"] = str(home)  # before bentoml is first imported in this process
    import bentoml

    from glasses import registry

    first = registry.get_model(registry.import_bundled_model(BUNDLED_MODEL_FILE))
    with bentoml.models.create(MODEL_NAME, labels={**first.info.labels, "copy_of": first.tag.version},
                               metadata=dict(first.info.metadata)) as ctx:
        for path in Path(first.path).iterdir():  # model.keras and model.tflite: the same runtime as the first
            if path.is_file() and path.name != "model.yaml":
                Path(ctx.path_of(path.name)).write_bytes(path.read_bytes())
    registry.promote(str(first.tag), note="swap benchmark")
    return str(first.tag), str(ctx.tag)


class Load:
    """`users` threads POSTing /predict back to back; each answer as (sent, latency s, status, model)."""

    def __init__(self, url: str, uploads: list, users: int) -> None:
        self.url, self.uploads, self.answers = url, uploads, []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(users)]
        for thread in self._threads:
            thread.start()

    def _run(self, i: int) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            up = self.uploads[i % len(self.uploads)]
            i += len(self._threads)
            sent = time.time()
            try:
                resp = session.post(f"{self.url}/predict", files={"image": (up.name, up.data, up.content_type)},
                                    timeout=60)
                model = resp.json().get("model") if resp.status_code == 200 else None
                self.answers.append((sent, time.time() - sent, resp.status_code, model))
            except (requests.RequestException, ValueError):
                self.answers.append((sent, time.time() - sent, 0, None))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)


def latency(answers: list) -> dict:
    ms = np.array([a[1] for a in answers]) * 1000
    failed = sum(a[2] != 200 for a in answers)
    if not len(ms):
        return {"requests": 0, "failed": failed}
    return {"requests": len(ms), "failed": failed, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99))}


def one_swap(load: Load, old: str, new: str, wait: float) -> dict:
    """Promote `new` under load; when old answers stop and new ones start, and the in-flight latency."""
    from glasses import registry

    written = time.time()
    registry.promote(new, note="swap benchmark")
    time.sleep(wait)
    after = [a for a in list(load.answers) if a[0] + a[1] >= written]
    last_old = max((a[0] + a[1] for a in after if a[3] == old), default=written)
    first_new = min((a[0] + a[1] for a in after if a[3] == new), default=float("nan"))
    window = [a for a in after if a[0] <= last_old + 2.0]
    return {"to": new, "first_new_s": first_new - written, "all_switched_s": last_old - written,
            **latency(window)}


def run(args: argparse.Namespace) -> dict:
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": describe(), "workers": args.workers,
              "users": args.users, "loadavg_before": os.getloadavg()}
    uploads = [u for u in load_images(generate_images(LOADTEST_DIR / "images")) if u.name.endswith(".jpg")]
    with tempfile.TemporaryDirectory(prefix="glasses-swap-") as tmp:
        home = Path(tmp) / "bentoml"
        versions = two_versions(home)
        port = free_port()
        env = {"BENTOML_HOME": str(home), "GLASSES_SERVE_WORKERS": str(args.workers), "GLASSES_MODEL": None}
        with Server(bentoml_command(port), port, env=env, timeout=300) as server:
            report["runtime"] = requests.get(f"{server.url}/model", timeout=30).json().get("runtime", "tf")
            load = Load(server.url, uploads, args.users)
            try:
                time.sleep(3)  # warm: every worker has answered
                start = time.time()
                time.sleep(args.steady)
                report["steady"] = latency([a for a in list(load.answers) if a[0] >= start])
                report["swaps"] = [one_swap(load, versions[i % 2], versions[(i + 1) % 2], args.wait)
                                   for i in range(args.swaps)]
            finally:
                load.stop()
            report["swap_log_lines"] = [line for line in server.log_tail(100_000).splitlines() if "swapped" in line]
    report["loadavg_after"] = os.getloadavg()
    return report


def format_report(r: dict) -> str:
    lines = [banner(r["machine"]), f"swap benchmark {r['date']}: {r['workers']} workers, "
             f"{r['users']} users back to back, bundled model on {r['runtime']}; load average before "
             f"{' / '.join(f'{x:.2f}' for x in r['loadavg_before'])}, after "
             f"{' / '.join(f'{x:.2f}' for x in r['loadavg_after'])}",
             f"steady: {r['steady']['requests']} requests, {r['steady']['failed']} failed, "
             f"p50 {r['steady']['p50_ms']:.0f} ms, p99 {r['steady']['p99_ms']:.0f} ms"]
    for i, s in enumerate(r["swaps"], 1):
        ratio = s["p99_ms"] / r["steady"]["p99_ms"] if s.get("p99_ms") else float("nan")
        lines.append(f"swap {i}: first answer from the new version {s['first_new_s']:.2f} s after the write, "
                     f"every worker switched {s['all_switched_s']:.2f} s; in flight: {s['requests']} requests, "
                     f"{s['failed']} failed, p50 {s.get('p50_ms', 0):.0f} ms, p99 {s.get('p99_ms', 0):.0f} ms "
                     f"({ratio:.2f}x steady p99)")
    loads = [line.split("(loaded and checked in ")[-1].rstrip(")") for line in r["swap_log_lines"] if "loaded" in line]
    lines.append(f"load + check per worker and swap (server log): {', '.join(loads)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.swap", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--steady", type=float, default=20.0, help="seconds of steady load before the swaps")
    parser.add_argument("--swaps", type=int, default=3)
    parser.add_argument("--wait", type=float, default=15.0, help="seconds of load after each promotion")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not BUNDLED_MODEL_FILE.exists():
        print(f"swap benchmark: the bundled model {BUNDLED_MODEL_FILE} is missing", file=sys.stderr)
        return 2
    report = run(args)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Serving benchmark: the service against what this machine allows and against a naive server.

    python -m loadtests.bench [--json] [--users 32] [--seconds 15] [--images DIR]

In one run, on the same machine, with the same model and the same images (per upload kind:
178x218 JPEG and 1024x1024 PNG, generated, see loadtests/images.py):
1. ceiling: decode + preprocess (glasses.preprocessing, a thread per core) + batched inference (batch
   64) in this process, once per runtime (tf: the compiled tf.function; litert: the interpreter on
   every core), through the one loader (glasses.runtimes): images/s; the best pipeline counts;
2. service: the real `bentoml serve` on 127.0.0.1 under saturating load (locust FastHttpUser in a
   subprocess, users back-to-back, single-image POST /predict): successful req/s and p50/p95/p99;
3. peer: loadtests/idiomatic_app.py, the service as BentoML's documentation writes it
   (`@bentoml.api(batchable=True)` over list[PIL.Image], default settings; same loader), same load;
4. naive: loadtests/naive_app.py (starlette + uvicorn, `model.predict` per request), same load.
For both servers also: batch-1 latency (sequential single requests, one at a time) before and right
after the saturating load (a release rule that keeps waiting after a burst shows up there), and for
the service BentoML's mean adaptive batch size during the load (from /metrics). Beside it, the
batch-1 floor: the same photos decoded, framed and classified in this process one at a time, as a
worker does (its runtime and threads): what the service's batch-1 latency cannot go below here.
Ratios: service/ceiling, service/peer and service/naive. The ceiling is measured before and after the servers and
the better run counts. The load generator shares the 2 cores: its own CPU use (cores busy during the
measured window) is measured and reported beside each figure, as is the server's, and
os.getloadavg() before and after (other work on the machine skews every figure). As a
load-independent view, the CPU time per image (ceiling: this process; servers: their process tree)
gives a second set of ratios: what the throughput ratios would be on an idle machine if every side
were CPU-bound on all cores (an optimistic estimate for the service and the naive server alike).

The model: the bundled default (models/glasses_classifier.bentomodel) if present, else the paper's
best CNN (training.models.PAPER_BEST_HYPERPARAMETERS) with seeded weights; either is registered into
a temporary BentoML store, never the user's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from glasses.config import (
    BUNDLED_MODEL_FILE,
    CLASS_MAP,
    DEFAULT_THRESHOLD,
    IMAGE_SIZE,
    LOADTEST_DIR,
    MODEL_FILE,
    SEED,
)
from glasses.machine import describe
from glasses.runtimes import available_runtimes
from loadtests.answers import predict_answer_error
from loadtests.images import Upload, check_uploads, generate_images, load_images, multipart_body
from loadtests.inprocess import Ceiling, batch1_floor
from loadtests.run import run_locust
from loadtests.server import Server, bentoml_command, free_port

KIND_LABELS = {"jpeg": "178x218 JPEG", "png": "1024x1024 PNG"}
# Goals from the issue: service/ceiling and service/naive per upload kind (None = no goal).
GOALS = {"jpeg": {"service/ceiling": 0.8, "service/peer": None, "service/naive": 10.0},
         "png": {"service/ceiling": 0.9, "service/peer": None, "service/naive": None}}
TARGETS = ("service", "peer", "naive")
LATENCY_REQUESTS = 100  # sequential batch-1 requests before and after each saturating load


def register_model(home: Path) -> tuple[str, Path, str]:
    """Register the benchmark's model into the store at `home`: (tag, model.keras path, description)."""
    os.environ["BENTOML_HOME"] = str(home)  # before bentoml is first imported in this process
    from glasses import preprocessing, registry

    if BUNDLED_MODEL_FILE.exists():
        tag, source = registry.import_bundled_model(), f"bundled default {BUNDLED_MODEL_FILE.name}"
    else:
        import keras

        from training import convert
        from training.models import PAPER_BEST_HYPERPARAMETERS, build_from_hyperparameters

        keras.utils.set_random_seed(SEED)
        model = build_from_hyperparameters(PAPER_BEST_HYPERPARAMETERS)
        conversion = convert.convert_checked(model, convert.generated_check_images(IMAGE_SIZE))
        metadata = {"image_size": IMAGE_SIZE, "preprocessing_version": preprocessing.PREPROCESSING_VERSION,
                    "class_map": CLASS_MAP, "threshold": DEFAULT_THRESHOLD,
                    "hyperparameters": PAPER_BEST_HYPERPARAMETERS, "data_source": "none (seeded weights, benchmark)"}
        tag = registry.save_version(model, metadata=metadata | {"litert": conversion.metadata()},
                                    labels={"stage": "benchmark"}, litert=conversion.tflite)
        source = f"paper's best CNN ({model.count_params():,} params), seeded weights"
    return tag, Path(registry.get_model(tag).path_of(MODEL_FILE)), source


def batch1_latency(url: str, uploads: list[Upload], n: int, answer: str = "object") -> dict:
    """`n` single-image POST /predict requests one after another on one keep-alive connection: p50/p95
    ms of the correct answers (200 and a verdict in the server's `answer` shape, loadtests/answers.py).

    The client is http.client with bodies built beforehand, so the figure is mostly the server's:
    `requests` costs ~1.5 ms more per request on these 2 shared cores (docs/loadtests.md)."""
    import http.client
    from urllib.parse import urlsplit

    bodies = [multipart_body("image", [up]) for up in uploads[:n]]
    where = urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    latencies = []
    try:
        for i in range(n + 3):  # the first 3 warm the connection and are not counted
            body, content_type = bodies[i % len(bodies)]
            start = time.perf_counter()
            conn.request("POST", "/predict", body=body, headers={"Content-Type": content_type})
            resp = conn.getresponse()
            data = resp.read()
            elapsed = 1000 * (time.perf_counter() - start)
            if i >= 3 and resp.status == 200 and predict_answer_error(json.loads(data), answer) is None:
                latencies.append(elapsed)
    finally:
        conn.close()
    return {"requests": n, "ok": len(latencies), "p50_ms": float(np.percentile(latencies, 50)) if latencies else None,
            "p95_ms": float(np.percentile(latencies, 95)) if latencies else None}


def adaptive_batches(url: str) -> tuple[float, float] | None:
    """(sum, count) of BentoML's adaptive batch size histogram on /metrics; None without one."""
    import requests

    resp = requests.get(f"{url}/metrics", timeout=10)
    if resp.status_code != 200 or "adaptive_batch_size_count" not in resp.text:
        return None
    value = lambda name: sum(float(v) for v in re.findall(rf"adaptive_batch_size_{name}{{[^}}]*}} ([0-9.e+]+)", resp.text))  # noqa: E731
    return value("sum"), value("count")


def measure_http(server: Server, images: Path, uploads: list[Upload], out: Path, name: str, users: int,
                 seconds: float, warmup: float, answer: str = "object") -> dict:
    """Saturating single-image /predict load from locust (subprocess); successful req/s and latencies.

    A request succeeds when it gets 200 and a verdict in the shape this server answers (`answer`).

    Also the server's CPU ms per request (its whole process tree, over the measured run), the load
    generator's own CPU use (cores busy during the test), the mean adaptive batch (service only) and
    batch-1 latency measured before and right after the load.
    """
    common = dict(users=users, spawn_rate=users, think_ms=0, images=images, user_classes=("PredictUser",),
                  predict_answer=answer)
    run_locust(server.url, out, f"{name}-warmup", run_time=warmup, html=False, **common)
    before = batch1_latency(server.url, uploads, LATENCY_REQUESTS, answer)
    batches0, cpu0 = adaptive_batches(server.url), server.cpu_seconds()
    run = run_locust(server.url, out, name, run_time=seconds, **common)
    server_cpu, batches1 = server.cpu_seconds() - cpu0, adaptive_batches(server.url)
    after = batch1_latency(server.url, uploads, LATENCY_REQUESTS, answer)
    row = next((s for s in run.stats if s.name == "/predict"), None)
    if row is None or row.requests == 0:
        raise RuntimeError(f"no /predict requests recorded for {name}; see {run.csv_prefix}.log")
    wall = run.generator.get("wall_s") or seconds
    ok = row.requests - row.failures
    mean_batch = None
    if batches0 and batches1 and batches1[1] > batches0[1]:
        mean_batch = (batches1[0] - batches0[0]) / (batches1[1] - batches0[1])
    return {"req_per_s": row.rps * (1 - row.failure_ratio), "requests": row.requests, "failures": row.failures,
            "p50_ms": row.p50_ms, "p95_ms": row.p95_ms, "p99_ms": row.p99_ms,
            "generator_cores": run.generator.get("cores"), "server_cores": server_cpu / wall,
            "cpu_ms_per_request": 1000 * server_cpu / ok if ok else None, "mean_batch": mean_batch,
            "batch1": before, "batch1_after_load": after}


def http_targets(home: str, tag: str, model_file: Path, service_env: dict) -> dict:
    """name -> (command(port), extra environment, answer shape) of each server compared, in the order
    they run. The answer shape is what a correct /predict answer of that server looks like
    (loadtests/answers.py): the peer's batchable API over list[PIL.Image] answers a list of one."""
    store = {"BENTOML_HOME": home, "GLASSES_MODEL": tag}
    return {
        "service": (bentoml_command, {**store, **service_env}, "object"),
        "peer": (lambda port: bentoml_command(port, ("loadtests.idiomatic_app:IdiomaticService",)), store, "list"),
        "naive": (lambda port: [sys.executable, "-m", "uvicorn", "loadtests.naive_app:app", "--host", "127.0.0.1",
                                "--port", str(port), "--log-level", "warning"],
                  {"GLASSES_NAIVE_MODEL": str(model_file)}, "object"),
    }


def ratios(res: dict) -> dict:
    """Throughput ratios of the service to the ceiling and each server, and the same from CPU per image.

    Load-independent view: on an idle machine where both sides are CPU-bound on all cores, the
    throughput ratio would be the inverse ratio of CPU per image.
    """
    service = res["service"]
    out = {"ratios": {"service/ceiling": service["req_per_s"] / res["ceiling"]["images_per_s"]},
           "cpu_ratios": {"service/ceiling": res["ceiling"]["cpu_ms_per_image"] / service["cpu_ms_per_request"]}}
    for other in TARGETS[1:]:
        r = res[other]
        out["ratios"][f"service/{other}"] = service["req_per_s"] / r["req_per_s"] if r["req_per_s"] else None
        out["cpu_ratios"][f"service/{other}"] = (r["cpu_ms_per_request"] / service["cpu_ms_per_request"]
                                                 if r["cpu_ms_per_request"] else None)
    out["goals"] = GOALS.get(res.get("kind", ""), {})
    return out


def run_benchmark(args: argparse.Namespace) -> dict:
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": describe(),
                    "loadavg_before": os.getloadavg(), "users": args.users, "seconds": args.seconds,
                    "warmup": args.warmup, "service_env": args.service_env, "kinds": {}}
    root = args.images or generate_images(LOADTEST_DIR / "images")
    kinds = {kind: root / kind for kind in args.kinds}
    out = LOADTEST_DIR / "reports" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    with tempfile.TemporaryDirectory(prefix="glasses-bench-") as home:
        tag, model_file, source = register_model(Path(home))
        report["model"] = {"tag": tag, "source": source}
        uploads = {kind: load_images(folder) for kind, folder in kinds.items()}
        for batch in uploads.values():
            check_uploads(batch)
        from glasses import registry

        framing = registry.get_model(tag).info.metadata.get("framing", "none")
        report["model"]["framing"] = framing
        pipelines = [Ceiling(model_file.parent, runtime, framing) for runtime in available_runtimes(model_file.parent)]
        ceilings: dict[str, list[dict]] = {kind: [] for kind in kinds}

        def measure_ceilings() -> None:  # run before and after the HTTP targets; the better run counts
            for kind in kinds:
                for pipeline in pipelines:
                    log(f"ceiling {kind} ({pipeline.runtime}) ...")
                    ceilings[kind].append(pipeline.measure(uploads[kind], args.ceiling_seconds))

        for kind in kinds:
            report["kinds"][kind] = {"label": KIND_LABELS.get(kind, kind), "files": len(uploads[kind]),
                                     "mean_bytes": int(np.mean([len(u.data) for u in uploads[kind]]))}
        measure_ceilings()
        for kind in kinds:
            log(f"batch-1 floor {kind} ...")
            report["kinds"][kind]["floor"] = batch1_floor(tag, uploads[kind])
        for target, (command, env, answer) in http_targets(home, tag, model_file, args.service_env).items():
            port = free_port()
            log(f"starting {target} on 127.0.0.1:{port} ...")
            with Server(command(port), port, env=env) as server:
                report[f"{target}_rss_mb"] = server.rss_bytes() / 2**20
                for kind, folder in kinds.items():
                    log(f"{target} {kind}: {args.users} users x {args.seconds:g}s ...")
                    report["kinds"][kind][target] = measure_http(server, folder, uploads[kind], out, f"{target}-{kind}",
                                                                 args.users, args.seconds, args.warmup, answer)
        measure_ceilings()
    for kind, res in report["kinds"].items():
        res["kind"] = kind
        res["ceiling_runs"] = [f"{c['runtime']} {c['images_per_s']:.0f}" for c in ceilings[kind]]
        res["ceiling"] = max(ceilings[kind], key=lambda c: c["images_per_s"])
        res.update(ratios(res))
    report["loadavg_after"] = os.getloadavg()
    report["reports"] = str(out)
    return report


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def format_report(report: dict) -> str:
    """The benchmark table (markdown) with ratios against the goals."""
    m = report["machine"]
    f = lambda v, spec=".0f": "-" if v is None else format(v, spec)  # noqa: E731
    lines = [
        f"Serving benchmark, {report['date']}, {m['cpu']} ({m['cores']} cores; ML flags "
        f"{' '.join(m['ml_flags']) or 'none'}; TensorFlow oneDNN {m['onednn']}), "
        f"load average before {' / '.join(f'{x:.2f}' for x in report['loadavg_before'])}, "
        f"after {' / '.join(f'{x:.2f}' for x in report['loadavg_after'])}",
        f"model {report['model']['tag']}: {report['model']['source']}, framing {report['model'].get('framing', 'none')}"
        " (ceiling, service and idiomatic peer; the naive server never frames)",
        f"load: locust FastHttpUser subprocess, {report['users']} users back-to-back, single-image POST /predict, "
        f"{report['seconds']:g} s after a {report['warmup']:g} s warm-up"
        + (f"; service env {report['service_env']}" if report["service_env"] else ""),
        "",
        "| upload | target | img/s or req/s | p50 ms | p95 ms | p99 ms | failures | CPU ms / image | server cores "
        "| generator cores |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, res in report["kinds"].items():
        c = res["ceiling"]
        runs = " / ".join(res["ceiling_runs"])
        lines.append(f"| {res['label']} | ceiling (in-process {c['runtime']}, batch {c['batch']}; best of {runs}) "
                     f"| {c['images_per_s']:.1f} | | | | | {c['cpu_ms_per_image']:.2f} | | |")
        for target in TARGETS:
            r = res[target]
            lines.append(f"| {res['label']} | {target} | {r['req_per_s']:.1f} | {f(r['p50_ms'])} | {f(r['p95_ms'])} "
                         f"| {f(r['p99_ms'])} | {r['failures']}/{r['requests']} | {f(r['cpu_ms_per_request'], '.2f')} "
                         f"| {f(r['server_cores'], '.2f')} | {f(r['generator_cores'], '.2f')} |")
    lines += ["", "| upload | ratio | measured (req/s) | goal | met | from CPU per image |", "|---|---|---:|---:|---|---:|"]
    for kind, res in report["kinds"].items():
        for name, value in res["ratios"].items():
            goal = res["goals"].get(name)
            met = "-" if goal is None or value is None else ("yes" if value >= goal else "NO")
            lines.append(f"| {res['label']} | {name} | {f(value, '.2f')} | {f(goal, 'g')} | {met} "
                         f"| {f(res['cpu_ratios'].get(name), '.2f')} |")
    lines += ["", f"| upload | target | batch-1 p50 / p95 ms ({LATENCY_REQUESTS} sequential) | right after the load "
              "| mean adaptive batch under load |", "|---|---|---:|---:|---:|"]
    for kind, res in report["kinds"].items():
        fl = res.get("floor")  # absent from reports written before 2026-12-07
        if fl:
            lines.append(f"| {res['label']} | floor (in-process, one photo at a time: decode + framing "
                         f"{fl['decode_p50_ms']:.2f} ms, classifier {fl['classify_p50_ms']:.2f} ms on {fl['runtime']}) "
                         f"| {fl['p50_ms']:.2f} | | |")
        for target in TARGETS:
            r = res[target]
            b, a = r["batch1"], r["batch1_after_load"]
            lines.append(f"| {res['label']} | {target} | {f(b['p50_ms'], '.1f')} / {f(b['p95_ms'], '.1f')} "
                         f"| {f(a['p50_ms'], '.1f')} / {f(a['p95_ms'], '.1f')} | {f(r['mean_batch'], '.1f')} |")
    lines += ["", "ceiling parts (images/s): " + "; ".join(
        f"{res['label']}: decode+preprocess {res['ceiling']['decode_images_per_s']:.0f} "
        f"({res['ceiling']['decode_threads']} threads), compiled inference {res['ceiling']['infer_images_per_s']:.0f}"
        for res in report["kinds"].values())]
    lines.append("server RSS after start (all processes): "
                 + ", ".join(f"{t} {report[f'{t}_rss_mb']:.0f} MB" for t in TARGETS))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.add_argument("--users", type=int, default=32, help="concurrent back-to-back users (default 32)")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured load per target and kind")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured load before each measurement")
    parser.add_argument("--ceiling-seconds", type=float, default=6.0,
                        help="in-process ceiling run per kind (measured twice: before and after the servers)")
    parser.add_argument("--kinds", nargs="+", default=["jpeg", "png"], help="subfolders of the image set to use")
    parser.add_argument("--images", type=Path, help="image set with one subfolder per kind (default: generated)")
    parser.add_argument("--service-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the service, e.g. GLASSES_SERVE_WORKERS=2 (repeatable)")
    args = parser.parse_args(argv)
    try:
        args.service_env = dict(item.split("=", 1) for item in args.service_env)
    except ValueError:
        parser.error("--service-env takes KEY=VALUE")
    report = run_benchmark(args)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

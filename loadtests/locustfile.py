"""Locust scenarios for the verdict service (no TensorFlow or BentoML here: gevent and TF must not share a process).

    locust -f loadtests/locustfile.py --host http://127.0.0.1:3000 [--images DIR] [--think-ms 100]

Users (weights = share of simulated users):
- PredictUser (10): POST /predict, one image (multipart field `image`), expects a verdict, in the
  shape `--predict-answer` names (loadtests/answers.py: "object", or "list" of one for a batchable
  API over a list of images, as the benchmark's BentoML-idiomatic peer answers);
- BatchUser (3): POST /predict_batch, BATCH_IMAGES images (repeated field `images`), expects one
  verdict each;
- BadUploadUser (exactly 1 user, 5x the think time): POST /predict with a bad upload (text, empty,
  truncated, SVG, misnamed field); a success only when the service answers 4xx with a JSON body,
  a failure on 2xx or 5xx;
- ReadyUser (exactly 1 user, 5x the think time): GET /readyz.

Images: `--images DIR` (or env LOCUST_IMAGES), every image under DIR; by default the generated set
(178x218 JPEG and 1024x1024 PNG, see loadtests/images.py). Request bodies are encoded once at start.
`--think-ms 0` makes users send back-to-back (saturating load, used by the benchmark, which runs
`PredictUser` alone).
"""

from __future__ import annotations

import json
import random
import time

import gevent
import locust.stats
from locust import FastHttpUser, events, task

from glasses.config import LOADTEST_DIR
from loadtests.answers import ANSWER_SHAPES, predict_answer_error, verdict_error
from loadtests.images import bad_uploads, generate_images, load_images, multipart_body

BATCH_IMAGES = 4
_bodies: dict[str, list[tuple[bytes, str]]] = {}


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    parser.add_argument("--images", type=str, env_var="LOCUST_IMAGES", default="",
                        help="folder of images to upload (default: the generated 178x218 JPEG + 1024x1024 PNG set)")
    parser.add_argument("--think-ms", type=float, env_var="LOCUST_THINK_MS", default=100.0,
                        help="each user waits uniform(0, think-ms) ms between requests; 0 = back-to-back")
    parser.add_argument("--predict-answer", choices=ANSWER_SHAPES, env_var="LOCUST_PREDICT_ANSWER", default="object",
                        help="shape of a correct POST /predict answer: one verdict object (default) or a list of one")


@events.init.add_listener
def _prepare_bodies(environment, **_kwargs) -> None:
    """Load the images once and pre-encode every request body this run will send."""
    options = environment.parsed_options
    folder = options.images if options and options.images else generate_images(LOADTEST_DIR / "images")
    uploads = load_images(folder)
    rng = random.Random(0)
    _bodies["single"] = [multipart_body("image", [up]) for up in uploads]
    _bodies["batch"] = [multipart_body("images", rng.sample(uploads, min(BATCH_IMAGES, len(uploads))))
                        for _ in range(16)]
    _bodies["bad"] = [multipart_body("image", [bad]) for bad in bad_uploads(uploads[0])]
    _bodies["bad"].append(multipart_body("file", [uploads[0]]))  # misnamed field
    # The blocking work above leaves gevent's cached loop time stale, and `-t` is a gevent timer: without
    # this the run would stop seconds early (a 20 s run measured 16.4 s on a busy machine).
    gevent.get_hub().loop.update_now()


_cpu_window: dict[str, float] = {}


@events.test_start.add_listener
def _cpu_start(**_kwargs) -> None:
    _cpu_window.update(cpu=time.process_time(), wall=time.perf_counter())


@events.test_stop.add_listener
def _cpu_stop(environment, **_kwargs) -> None:
    """Record the load generator's own CPU use during the test (it shares the machine with the server).

    Written to `<csv prefix>_generator.json` when --csv is given: cpu_s, wall_s, cores = cpu_s / wall_s.
    """
    if not _cpu_window:
        return
    cpu = time.process_time() - _cpu_window["cpu"]
    wall = time.perf_counter() - _cpu_window["wall"]
    prefix = environment.parsed_options.csv_prefix if environment.parsed_options else None
    if prefix:
        with open(f"{prefix}_generator.json", "w") as fh:
            json.dump({"cpu_s": cpu, "wall_s": wall, "cores": cpu / wall if wall else 0.0}, fh)


@events.quit.add_listener
def _final_csv_write(**_kwargs) -> None:
    """Let locust's CSV writer (a greenlet writing every CSV_STATS_INTERVAL_SEC) write the final totals.

    Without this, `<prefix>_stats.csv` misses the last second of requests (and any failure in it).
    """
    gevent.sleep(locust.stats.CSV_STATS_INTERVAL_SEC + 0.2)


class _Base(FastHttpUser):
    abstract = True
    think_factor = 1.0  # this user's think time is uniform(0, think_factor * --think-ms)

    def wait_time(self) -> float:
        options = self.environment.parsed_options
        think_ms = options.think_ms if options else 100.0
        return random.uniform(0.0, self.think_factor * think_ms / 1000.0)

    def _post(self, path: str, kind: str, name: str):
        body, content_type = random.choice(_bodies[kind])
        return self.client.post(path, data=body, headers={"Content-Type": content_type}, name=name,
                                catch_response=True)


class PredictUser(_Base):
    weight = 10

    @task
    def predict(self) -> None:
        with self._post("/predict", "single", "/predict") as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
                return
            options = self.environment.parsed_options
            error = predict_answer_error(resp.json(), options.predict_answer if options else "object")
            if error:
                resp.failure(error)


class BatchUser(_Base):
    weight = 3

    @task
    def predict_batch(self) -> None:
        with self._post("/predict_batch", "batch", "/predict_batch") as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
                return
            items = resp.json()
            if not isinstance(items, list) or len(items) != BATCH_IMAGES:
                resp.failure(f"expected a list of {BATCH_IMAGES} verdicts, got {str(items)[:200]}")
                return
            errors = [e for e in map(verdict_error, items) if e]
            if errors:
                resp.failure(errors[0])


class BadUploadUser(_Base):
    fixed_count = 1  # exactly one such user whatever -u is (weights would round it to zero at small -u)
    think_factor = 5.0  # a small share of the traffic: ~4 req/s at the default think time

    @task
    def bad_upload(self) -> None:
        with self._post("/predict", "bad", "/predict [bad upload -> 4xx]") as resp:
            if not 400 <= resp.status_code < 500:
                resp.failure(f"bad upload got HTTP {resp.status_code}, expected 4xx: {(resp.text or '')[:200]}")
                return
            try:
                json.loads(resp.text or "")
            except ValueError:
                resp.failure(f"4xx without a JSON body: {(resp.text or '')[:200]}")
                return
            resp.success()


class ReadyUser(_Base):
    fixed_count = 1
    think_factor = 5.0

    @task
    def readyz(self) -> None:
        with self.client.get("/readyz", name="/readyz", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")

"""Load tests: the generated upload set, the SLO checker on crafted CSVs, and the short locust profile
against a real server (marker `loadtest`)."""

from __future__ import annotations

import email.parser
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from glasses.config import BUNDLED_MODEL_FILE
from glasses.preprocessing import ImageDecodeError, decode
from loadtests.images import bad_uploads, generate_images, load_images, multipart_body
from loadtests.run import memory_report
from loadtests.server import QUIET_ENV, free_port
from loadtests.slo import SLO, check, main as slo_main, read_stats

REPO_ROOT = Path(__file__).resolve().parent.parent
HEADER = ("Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
          "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,"
          "99.99%,100%")


def stats_csv(path: Path, rows: list[tuple[str, int, int, int, int]]) -> Path:
    """A locust `_stats.csv` with (name, requests, failures, p95, p99) rows plus the Aggregated row."""
    lines = [HEADER]
    for name, n, fails, p95, p99 in rows:
        #                50%       66%       75%       80%       90%  95%  98%  99%  99.9% 99.99% 100%
        pcts = [p95 // 2, p95 // 2, p95 // 2, p95 // 2, p95, p95, p99, p99, p99, p99, p99]
        cells = ["N/A"] * len(pcts) if n == 0 else [str(v) for v in pcts]
        lines.append(f"POST,{name},{n},{fails},{p95 // 2},40.0,3.0,{p99},64.0,{n / 20:.2f},{fails / 20:.2f},"
                     + ",".join(cells))
    n, fails = sum(r[1] for r in rows), sum(r[2] for r in rows)
    p95, p99 = max(r[3] for r in rows), max(r[4] for r in rows)
    lines.append(f",Aggregated,{n},{fails},20,40.0,3.0,{p99},64.0,{n / 20:.2f},{fails / 20:.2f},"
                 f"20,30,40,50,60,{p95},{p99},{p99},{p99},{p99},{p99}")
    path.write_text("\n".join(lines) + "\n")
    return path


# --- upload set ----------------------------------------------------------------------------------

def test_generated_set_has_realistic_sizes_and_is_deterministic(tmp_path: Path) -> None:
    counts = {"jpeg": 3, "png": 1}
    first = load_images(generate_images(tmp_path / "a", counts))
    second = load_images(generate_images(tmp_path / "b", counts))
    assert [u.name for u in first] == ["jpeg/face-000.jpg", "jpeg/face-001.jpg", "jpeg/face-002.jpg", "png/face-000.png"]
    assert [u.data for u in first] == [u.data for u in second]
    for up in first:
        img = Image.open(io.BytesIO(up.data))
        if up.name.startswith("jpeg/"):
            assert (img.format, img.size, up.content_type) == ("JPEG", (178, 218), "image/jpeg")
            assert 3_000 < len(up.data) < 20_000  # CelebA photos average ~7 KB
        else:
            assert (img.format, img.size, up.content_type) == ("PNG", (1024, 1024), "image/png")
            assert len(up.data) > 800_000  # Kaggle GAN faces are ~1.3-1.7 MB: decode cost must be realistic
    assert len({u.data for u in first}) == len(first)


def test_load_images_refuses_missing_or_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="no images"):
        load_images(tmp_path / "empty")


def test_bad_uploads_really_are_undecodable(tmp_path: Path) -> None:
    good = load_images(generate_images(tmp_path, {"jpeg": 1}))[0]
    decode(good.data)
    for bad in bad_uploads(good):
        with pytest.raises(ImageDecodeError):
            decode(bad.data)


def test_multipart_body_round_trips(tmp_path: Path) -> None:
    uploads = load_images(generate_images(tmp_path, {"jpeg": 2}))
    body, content_type = multipart_body("images", uploads)
    message = email.parser.BytesParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    parts = message.get_payload()
    assert [p.get_param("name", header="content-disposition") for p in parts] == ["images", "images"]
    assert [p.get_filename() for p in parts] == ["face-000.jpg", "face-001.jpg"]
    assert [p.get_payload(decode=True) for p in parts] == [u.data for u in uploads]


# --- SLO checker ---------------------------------------------------------------------------------

SLO_BOUNDS = SLO(p95_ms=500, p99_ms=1000)


def test_slo_met_on_a_clean_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = stats_csv(tmp_path / "ok_stats.csv", [("/predict", 400, 0, 300, 800), ("/readyz", 50, 0, 5, 9)])
    stats = read_stats(path)
    assert [s.name for s in stats] == ["/predict", "/readyz", "Aggregated"]
    assert (stats[0].requests, stats[0].p95_ms, stats[0].p99_ms) == (400, 300, 800)
    assert check(stats, SLO_BOUNDS) == []
    assert slo_main([str(path), "--p95-ms", "500", "--p99-ms", "1000"]) == 0
    assert "SLO: met" in capsys.readouterr().out


@pytest.mark.parametrize(
    "rows, expected",
    [
        ([("/predict", 400, 1, 300, 800)], "failure ratio 0.0025 (1/400)"),
        ([("/predict", 400, 0, 501, 800)], "/predict: p95 501.0 ms > 500 ms"),
        ([("/predict", 400, 0, 300, 1200)], "/predict: p99 1200.0 ms > 1000 ms"),
        ([("/predict", 400, 0, 300, 800), ("/readyz", 0, 0, 0, 0)], "/readyz: no requests were made"),
    ],
    ids=["one-failure", "p95", "p99", "endpoint-never-called"],
)
def test_slo_breached(tmp_path: Path, capsys: pytest.CaptureFixture, rows, expected: str) -> None:
    path = stats_csv(tmp_path / "bad_stats.csv", rows)
    breaches = check(read_stats(path), SLO_BOUNDS)
    assert any(expected in b for b in breaches), breaches
    assert slo_main([str(path), "--p95-ms", "500", "--p99-ms", "1000"]) == 1
    assert "SLO BREACHED" in capsys.readouterr().out


def test_slo_tolerates_a_configured_failure_ratio(tmp_path: Path) -> None:
    path = stats_csv(tmp_path / "s_stats.csv", [("/predict", 400, 1, 300, 800)])
    assert check(read_stats(path), SLO(500, 1000, max_failure_ratio=0.01)) == []


def test_slo_cli_exit_codes(tmp_path: Path) -> None:
    """The CLI as CI calls it: 1 on a breach, 2 on a file that is not locust's stats."""
    breached = stats_csv(tmp_path / "b_stats.csv", [("/predict", 10, 0, 900, 900)])
    cmd = [sys.executable, "-m", "loadtests.slo", "--p95-ms", "500", "--p99-ms", "1000"]
    run = subprocess.run([*cmd, str(breached)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "p95 900.0 ms > 500 ms" in run.stdout
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    run = subprocess.run([*cmd, str(other)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "not a locust stats CSV" in run.stderr
    run = subprocess.run([*cmd, str(tmp_path / "missing.csv")], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2 and "does not exist" in run.stderr


def test_memory_report_measures_growth_after_warmup() -> None:
    mb = 2**20
    samples = [(0.0, 500 * mb), (10.0, 800 * mb), (20.0, 820 * mb), (30.0, 880 * mb)]
    report = memory_report(samples, warmup_s=10.0)
    assert (report["rss_ready_mb"], report["rss_start_mb"], report["rss_mid_mb"], report["rss_end_mb"],
            report["rss_peak_mb"]) == (500, 800, 820, 880, 880)
    assert report["growth"] == pytest.approx(0.10)
    assert report["growth_second_half"] == pytest.approx(60 / 820)
    assert report["samples"][0] == (0.0, 500.0)


# --- the runner ----------------------------------------------------------------------------------

def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **QUIET_ENV, **extra}
    env.pop("GLASSES_MODEL", None)
    return env


def test_runner_fails_when_the_service_fails(tmp_path: Path) -> None:
    """Nothing listens on the port: every request fails, so the runner must report a breach (exit 1)."""
    cmd = [sys.executable, "-m", "loadtests", "--host", f"http://127.0.0.1:{free_port()}", "--run-time", "2",
           "--out", str(tmp_path)]
    run = subprocess.run(cmd, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "SLO BREACHED: /predict: failure ratio 1.0000" in run.stdout
    assert (tmp_path / "short_stats.csv").exists() and (tmp_path / "short.html").exists()


def test_runner_refuses_a_missing_image_folder(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "loadtests", "--images", str(tmp_path / "nope")], cwd=REPO_ROOT,
                         env=_env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip() == f"loadtests: image folder {tmp_path / 'nope'} does not exist"


@pytest.mark.loadtest
def test_short_profile_meets_its_slos_against_a_real_server(tmp_path: Path) -> None:
    """`python -m loadtests` starts `bentoml serve` on a free port, runs ~20 s of mixed locust load
    (single, batch, bad uploads, readyz) and checks the SLOs; then the same real CSV breaches a tight SLO."""
    home = tmp_path / "bentoml"
    if not BUNDLED_MODEL_FILE.exists():  # with the bundled default an empty store serves it
        from _service import register_model

        register_model(home)
    home.mkdir(exist_ok=True)
    out = tmp_path / "reports"
    run = subprocess.run([sys.executable, "-m", "loadtests", "--profile", "short", "--out", str(out)],
                         cwd=REPO_ROOT, env=_env(BENTOML_HOME=str(home)), capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SLO: met" in run.stdout and "server RSS: ready" in run.stdout
    stats = {s.name: s for s in read_stats(out / "short_stats.csv")}
    for name in ("/predict", "/predict_batch", "/predict [bad upload -> 4xx]", "/readyz"):
        assert stats[name].requests > 0 and stats[name].failures == 0, (name, stats[name])
    assert stats["/predict"].requests > stats["/predict [bad upload -> 4xx]"].requests
    assert (out / "short.html").stat().st_size > 10_000
    assert slo_main([str(out / "short_stats.csv"), "--p95-ms", "1", "--p99-ms", "1"]) == 1


# --- answers: each server judged by what it returns -------------------------------------------------

def test_predict_answer_shapes() -> None:
    """The service's verdict object passes as "object"; the idiomatic peer's list of one as "list"; neither
    shape passes as the other, and a malformed verdict fails both."""
    from loadtests.answers import predict_answer_error
    from service.inference import verdict

    one = verdict(0.8, 0.5, "glasses_classifier:x")
    assert predict_answer_error(one, "object") is None
    assert predict_answer_error([one], "list") is None
    assert "expected a JSON object" in predict_answer_error([one], "object")
    assert "list of 1 verdict" in predict_answer_error(one, "list")
    assert "list of 1 verdict" in predict_answer_error([one, one], "list")
    assert "bad probability" in predict_answer_error([{**one, "probability": 1.5}], "list")
    assert "bad verdict" in predict_answer_error({**one, "verdict": "maybe"}, "object")
    with pytest.raises(ValueError, match="unknown answer shape"):
        predict_answer_error(one, "dict")


def _store_with_model(home: Path) -> str:
    """A BentoML store at `home` holding the bundled model (else a seeded test CNN); its tag."""
    if not BUNDLED_MODEL_FILE.exists():
        from _service import register_model

        return register_model(home)
    home.mkdir(parents=True, exist_ok=True)
    code = "from glasses.registry import import_bundled_model; print(import_bundled_model())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=_env(BENTOML_HOME=str(home)),
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.loadtest
def test_bench_judges_the_idiomatic_peer_by_its_own_answers(tmp_path: Path) -> None:
    """The real BentoML-idiomatic peer answers /predict with a list of one verdict: the benchmark's
    batch-1 timing and its locust load count those answers as successes, and would not as "object"."""
    from loadtests.bench import batch1_latency, http_targets
    from loadtests.run import run_locust
    from loadtests.server import Server

    home = tmp_path / "bentoml"
    tag = _store_with_model(home)
    command, env, answer = http_targets(str(home), tag, tmp_path / "unused.keras", {})["peer"]
    assert answer == "list"
    images = generate_images(tmp_path / "images", {"jpeg": 6, "png": 0}) / "jpeg"
    uploads = load_images(images)
    port = free_port()
    with Server(command(port), port, env=env) as server:
        assert batch1_latency(server.url, uploads, 5, answer)["ok"] == 5
        assert batch1_latency(server.url, uploads, 5, "object")["ok"] == 0
        run = run_locust(server.url, tmp_path / "reports", "peer", users=2, spawn_rate=2, run_time=2, think_ms=0,
                         images=images, user_classes=("PredictUser",), html=False, predict_answer=answer)
    [row] = [s for s in run.stats if s.name == "/predict"]
    assert row.requests > 0 and row.failures == 0, (row, (tmp_path / "reports" / "peer.log").read_text()[-2000:])


def test_bench_floor_times_each_photo_on_the_served_runtime(tmp_path: Path) -> None:
    """The benchmark's batch-1 floor decodes, frames and classifies every photo once per round, on the
    runtime the service would choose for the version, and reports each part beside their sum."""
    import json

    code = ("import json, sys; from pathlib import Path; from loadtests import bench, inprocess; "
            "from loadtests.images import generate_images, load_images; "
            "tag = bench.register_model(Path(sys.argv[1]))[0]; "
            "ups = load_images(generate_images(Path(sys.argv[2]), {'jpeg': 4, 'png': 0}) / 'jpeg'); "
            "from glasses import registry; from glasses.config import SERVE_RUNTIME; "
            "from glasses.runtimes import choose_runtime; "
            "served = choose_runtime(registry.get_model(tag), SERVE_RUNTIME); "
            "print(json.dumps({**inprocess.batch1_floor(tag, ups, rounds=2), 'served': served}))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "bentoml"), str(tmp_path / "images")],
                         cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    floor = json.loads(out.stdout.strip().splitlines()[-1])
    assert floor["photos"] == 8
    assert floor["runtime"] == floor["served"]
    assert 0 < floor["decode_p50_ms"] <= floor["p50_ms"] and 0 < floor["classify_p50_ms"] <= floor["p50_ms"]

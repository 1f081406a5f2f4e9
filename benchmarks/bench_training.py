"""Benchmark a training epoch: each speed lever alone and together, fp32 vs bf16 vs the chosen path,
one process vs parallel trials. Prints figures and ratios from one run; asserts nothing.

    .venv/bin/python benchmarks/bench_training.py [--steps 12] [--epochs 2] [--repeats 2] [--quick]
        [--accuracy MANIFEST [--accuracy-epochs 4] [--no-timing]]

Every configuration runs in its own child process (oneDNN and TensorFlow's thread pools are fixed
when TensorFlow starts) through the training code itself (training.models, training.data,
training.acceleration) on random uint8 128 px images, batch 64: one warm-up epoch (tracing, XLA
compilation), then --epochs timed epochs of --steps batches. Figures are seconds per epoch of the
CelebA train split (3,360 photos = 53 batches), i.e. the per-step time x 53, median over epochs and
repeats (XLA: one run). Configurations are interleaved (round robin) so that a change in machine load hits all of
them alike; the load average is printed before and after.

Models: the paper's best (12/44/44 filters, kernels 5/3/3, dense 96) and the slowest configuration
of the paper's search space (4 x 44 filters 5x5, dense 192). "parallel" = two processes with one
thread each running at the same time (what a keras-tuner chief + 2 workers do), reported as the
effective seconds per epoch (wall / 2). --accuracy fits the paper's best model on a real 128 px
split manifest in fp32 and on the chosen path and prints the best validation accuracy / AUC (threads,
steps per execution and the batched rescale do not change the arithmetic; bf16 and XLA do).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TRAIN_BATCHES = 53  # 3,360 CelebA train photos / batch 64
SLOWEST_HYPERPARAMETERS = {
    "conv_layers": 4, "units": 192, "learning_rate": 1e-3,
    **{f"{k}_{i}": v for i in range(4) for k, v in (("filters", 44), ("kernel_size", 5), ("pooling", "max"))},
}
BASE = {"precision": "float32", "jit": "off", "intra": 0, "inter": 0, "spe": 1, "pipeline": "per-image",
        "onednn": "default"}
# name -> settings changed from BASE (each lever alone, then the chosen path = all that pay)
LEVERS = {
    "fp32 baseline (as before)": {},
    "oneDNN off": {"onednn": "0"},
    "bf16 (mixed_bfloat16)": {"precision": "mixed_bfloat16"},
    "XLA (jit_compile)": {"jit": "on"},
    "threads intra 2 / inter 1": {"intra": 2, "inter": 1},
    "steps_per_execution 8": {"spe": 8},
    "batched rescale pipeline": {"pipeline": "batched"},
}


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def child(config: dict) -> None:
    """Time --steps batches per epoch for one configuration; print one JSON line."""
    import numpy as np

    from training import acceleration, models
    from training.data import dataset_from_arrays

    plan = acceleration.make_plan(config["precision"], config["jit"], intra_threads=config["intra"],
                                  inter_threads=config["inter"], steps_per_execution=config["spe"])
    rng = np.random.default_rng(0)
    n = config["steps"] * 64
    x = rng.integers(0, 256, (n, 128, 128, 3), dtype=np.uint8)
    y = (rng.random(n) < 0.06).astype(np.int64)
    import keras
    import tensorflow as tf

    with acceleration.accelerated(plan):
        if config["pipeline"] == "batched":
            ds = dataset_from_arrays(x, y, shuffle=True)
        else:  # the pipeline before: rescale every image, then batch
            ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.float32))).cache().shuffle(2000, seed=1)
            ds = ds.map(lambda a, b: (tf.cast(a, tf.float32) / 255.0, b), num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=True).batch(64).prefetch(tf.data.AUTOTUNE)
        hps = models.PAPER_BEST_HYPERPARAMETERS if config["model"] == "best" else SLOWEST_HYPERPARAMETERS
        keras.utils.set_random_seed(1)
        model = models.build_from_hyperparameters(hps, "paper", 128)
        timer = acceleration.epoch_timer()
        model.fit(ds, epochs=1 + config["epochs"], callbacks=[timer], verbose=0)
    times = timer.epoch_times
    print(json.dumps({"warmup_s": times[0], "epoch_s": [t * TRAIN_BATCHES / config["steps"] for t in times[1:]],
                      "plan": plan.as_dict(), "params": model.count_params()}), flush=True)


def accuracy_child(config: dict) -> None:
    """Fit the paper's best model on a real manifest for config["epochs"]; print the best val metrics."""
    from training import acceleration, models
    from training.data import make_dataset

    import keras

    plan = acceleration.make_plan(config["precision"], config["jit"], intra_threads=config["intra"],
                                  inter_threads=config["inter"], steps_per_execution=config["spe"])
    acceleration.set_threads(plan.intra_threads, plan.inter_threads)
    with acceleration.accelerated(plan):
        keras.utils.set_random_seed(1234)
        train = make_dataset(config["manifest"], "train", seed=1234)
        val = make_dataset(config["manifest"], "val", shuffle=False)
        model = models.build_from_hyperparameters(models.PAPER_BEST_HYPERPARAMETERS, "paper", 128)
        timer = acceleration.epoch_timer()
        history = model.fit(train, validation_data=val, epochs=config["epochs"], callbacks=[timer], verbose=0)
    h = history.history
    print(json.dumps({"val_accuracy": max(h["val_accuracy"]), "val_auc": max(h["val_auc"]),
                      "val_loss": min(h["val_loss"]), "epoch_s": timer.epoch_times, "plan": plan.as_dict()}),
          flush=True)


def accuracy(manifest: str, epochs: int, chosen: dict) -> None:
    """Best validation accuracy / AUC of the paper's best model after `epochs` on real data, per precision."""
    print(f"\nbest validation metrics of the paper's best model, {epochs} epochs on {manifest} ({load()})")
    print(f"  {'configuration':<28} {'val_accuracy':>12} {'val_auc':>8} {'val_loss':>9} {'s/epoch':>8}")
    runs = [("fp32 baseline", {}), ("chosen path", chosen)]  # the other levers do not change the arithmetic
    for name, settings in runs:
        config = {**BASE, **settings, "manifest": manifest, "epochs": epochs, "mode": "accuracy"}
        r = run_single(config)
        print(f"  {name:<28} {r['val_accuracy']:12.4f} {r['val_auc']:8.4f} {r['val_loss']:9.4f} "
              f"{statistics.median(r['epoch_s']):8.2f}   ({load()})", flush=True)


def _spawn(config: dict) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    if config["onednn"] != "default":
        env["TF_ENABLE_ONEDNN_OPTS"] = config["onednn"]
    return subprocess.Popen([sys.executable, __file__, "--child", json.dumps(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}): {err.strip().splitlines()[-1:]}")
    return json.loads(out.strip().splitlines()[-1])


def run_single(config: dict) -> dict:
    return _result(_spawn(config))


def run_parallel(config: dict) -> dict:
    """Two one-thread processes at once; effective s/epoch = wall of both / 2 per epoch."""
    started = time.monotonic()
    procs = [_spawn({**config, "intra": 1, "inter": 1}) for _ in range(2)]
    results = [_result(p) for p in procs]
    wall = time.monotonic() - started
    per_epoch = [statistics.median(r["epoch_s"]) for r in results]
    return {"epoch_s": [max(per_epoch) / 2], "wall_s": wall, "plan": results[0]["plan"],
            "params": results[0]["params"]}


def table(configs: list[tuple[str, str, dict]], args) -> dict[tuple[str, str], list[float]]:
    """Run every (model, name, settings) --repeats times, interleaved; median s/epoch per row."""
    samples: dict[tuple[str, str], list[float]] = {}
    plans: dict[tuple[str, str], dict] = {}
    for rep in range(args.repeats):
        for model, name, settings in configs:
            if rep and settings.get("jit") == "on":
                continue  # XLA is measured once: on this CPU it is several times slower
            config = {**BASE, **settings, "model": model, "steps": args.steps, "epochs": args.epochs}
            result = run_parallel(config) if settings.get("parallel") else run_single(config)
            samples.setdefault((model, name), []).extend(result["epoch_s"])
            plans[(model, name)] = result["plan"]
            print(f"  [{rep + 1}/{args.repeats}] {model:<8} {name:<34} {statistics.median(result['epoch_s']):6.2f} s/epoch"
                  f"  ({load()})", flush=True)
    return {key: samples[key] for key in samples}


def banner() -> None:
    from training.acceleration import cpu_info

    cpu = cpu_info()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    probe = ("import json, tensorflow as tf; from training import acceleration as a; p = a.make_plan(); "
             "print(json.dumps([tf.__version__, p.onednn, p.precision, p.reason]))")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True).stdout
    version, onednn, precision, reason = json.loads(out.strip().splitlines()[-1])
    print(f"CPU: {cpu.model}, {cpu.cores} cores; bf16 instructions: {'yes' if cpu.bf16 else 'no'} "
          f"({', '.join(f for f in ('avx512_bf16', 'amx_bf16', 'amx_tile') if f in cpu.flags) or 'none'}); "
          f"AMX: {'yes' if cpu.amx else 'no'}")
    print(f"TensorFlow {version}; oneDNN kernels: {'on' if onednn else 'off'} "
          f"(TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}); "
          f"precision auto -> {precision} ({reason})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=12, help="batches of 64 per timed epoch")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per configuration (after a warm-up)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="only fp32 / bf16 / chosen / parallel, both models")
    parser.add_argument("--chosen", default='{"precision": "mixed_bfloat16", "pipeline": "batched"}',
                        help="JSON settings of the chosen path (changes from the fp32 baseline)")
    parser.add_argument("--accuracy", metavar="MANIFEST", help="also fit on this real split manifest (128 px)")
    parser.add_argument("--accuracy-epochs", type=int, default=4)
    parser.add_argument("--no-timing", action="store_true", help="only the --accuracy part")
    args = parser.parse_args()
    if args.child:
        config = json.loads(args.child)
        (accuracy_child if config.get("mode") == "accuracy" else child)(config)
        return
    banner()
    chosen = json.loads(args.chosen)
    print(f"chosen path: {chosen}; {args.steps} batches x {args.epochs} epochs after a warm-up, "
          f"{args.repeats} repeats; {load()}", flush=True)
    configs = [] if args.quick else [("best", name, s) for name, s in LEVERS.items()]
    for model in ("best", "slowest"):
        if args.quick or model == "slowest":
            configs += [(model, "fp32 baseline (as before)", {}), (model, "bf16 (mixed_bfloat16)", LEVERS["bf16 (mixed_bfloat16)"])]
        configs += [(model, "chosen path, one process", chosen),
                    (model, "chosen path, 2 trials in parallel", {**chosen, "parallel": True})]
    if args.no_timing:
        configs = []
    started = time.monotonic()
    results = table(configs, args) if configs else {}
    print(f"\nseconds per epoch of 3,360 photos (median of {args.repeats} x {args.epochs}); {load()}; "
          f"{time.monotonic() - started:.0f} s in all")
    for model in ("best", "slowest") if results else ():
        base = statistics.median(results[(model, "fp32 baseline (as before)")])
        print(f"\n{model} model:  {'configuration':<36} {'s/epoch':>8} {'x baseline':>11}")
        for (m, name), values in results.items():
            if m == model:
                med = statistics.median(values)
                print(f"              {name:<36} {med:8.2f} {base / med:10.2f}x")
    if args.accuracy:
        accuracy(args.accuracy, args.accuracy_epochs, chosen)


if __name__ == "__main__":
    main()

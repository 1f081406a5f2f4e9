"""Acceleration: how fast a training step runs on this machine, never what it computes.

    /proc/cpuinfo (model name, flags) + settings (glasses/config.py: GLASSES_PRECISION, GLASSES_JIT,
    GLASSES_INTRA_THREADS, GLASSES_INTER_THREADS, GLASSES_STEPS_PER_EXECUTION)
      -> Plan: precision (mixed_bfloat16 only where the CPU has bf16 instructions and TensorFlow's
         oneDNN kernels are on; the sigmoid output and the loss stay float32), XLA jit_compile,
         intra/inter-op threads, steps per execution
      -> accelerated(plan): TF threads (before the runtime starts), the Keras dtype policy and the
         compile options the model builders pick up (compile_options), restored on exit
      -> float32_copy(model): what is saved and registered is always a float32 model
      -> epoch_timer(): wall time of every epoch (the tuner writes them per trial)

The search itself (space, objective, epochs, seed, early stopping) is not touched here.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass
from typing import Iterator

from glasses.config import (
    TRAIN_INTER_THREADS,
    TRAIN_INTRA_THREADS,
    TRAIN_JIT,
    TRAIN_PRECISION,
    TRAIN_STEPS_PER_EXECUTION,
)
from glasses.machine import BF16_FLAGS, CpuInfo, cpu_info, parse_cpuinfo  # noqa: F401 (parse_cpuinfo: tests)
from training.cli import UserError

PRECISIONS = ("auto", "float32", "mixed_bfloat16")
JIT_SETTINGS = ("auto", "on", "off")


@dataclass(frozen=True)
class Plan:
    """How training runs here: recorded in tune.json and the registered model's metadata."""

    precision: str  # "float32" | "mixed_bfloat16"
    jit_compile: bool
    intra_threads: int  # 0 = TensorFlow's default (one per core)
    inter_threads: int
    steps_per_execution: int
    cpu_model: str
    cpu_bf16: bool
    cpu_amx: bool
    onednn: bool
    reason: str  # why this precision

    def as_dict(self) -> dict:
        return asdict(self)


def choose_precision(setting: str, cpu: CpuInfo, onednn: bool) -> tuple[str, str]:
    """(precision, reason) for a GLASSES_PRECISION setting on a CPU: a pure function of its inputs.

    "auto" picks mixed_bfloat16 only when the CPU has native bf16 (avx512_bf16 or amx_bf16) and
    TensorFlow's oneDNN kernels are on (without them bf16 convolutions are emulated, slower than
    float32); otherwise float32. An explicit setting is obeyed.
    """
    if setting not in PRECISIONS:
        raise UserError(f"GLASSES_PRECISION={setting!r}: expected one of {', '.join(PRECISIONS)}")
    if setting != "auto":
        return setting, f"set explicitly (GLASSES_PRECISION={setting})"
    if not cpu.bf16:
        return "float32", "auto: the CPU has no bf16 instructions (avx512_bf16/amx_bf16)"
    if not onednn:
        return "float32", "auto: oneDNN is off (TF_ENABLE_ONEDNN_OPTS=0), bf16 would be emulated"
    found = "+".join(f for f in BF16_FLAGS if f in cpu.flags)
    return "mixed_bfloat16", f"auto: the CPU has {found} and oneDNN is on"


def choose_jit(setting: str) -> bool:
    """XLA for GLASSES_JIT: auto = off on CPU (see docs/training.md for the measurement), on, off."""
    if setting not in JIT_SETTINGS:
        raise UserError(f"GLASSES_JIT={setting!r}: expected one of {', '.join(JIT_SETTINGS)}")
    return setting == "on"


def onednn_enabled() -> bool:
    """Whether TensorFlow's oneDNN kernels are on in this process (imports TensorFlow)."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") not in ("0", "false", "False")


def make_plan(precision: str | None = None, jit: str | None = None, *, intra_threads: int | None = None,
              inter_threads: int | None = None, steps_per_execution: int | None = None) -> Plan:
    """The Plan for this machine from the settings in glasses/config.py (arguments override them)."""
    cpu = cpu_info()
    onednn = onednn_enabled()
    chosen, reason = choose_precision(precision or TRAIN_PRECISION, cpu, onednn)
    return Plan(
        precision=chosen,
        jit_compile=choose_jit(jit or TRAIN_JIT),
        intra_threads=TRAIN_INTRA_THREADS if intra_threads is None else intra_threads,
        inter_threads=TRAIN_INTER_THREADS if inter_threads is None else inter_threads,
        steps_per_execution=steps_per_execution or TRAIN_STEPS_PER_EXECUTION,
        cpu_model=cpu.model, cpu_bf16=cpu.bf16, cpu_amx=cpu.amx, onednn=onednn, reason=reason,
    )


def set_threads(intra: int, inter: int) -> bool:
    """Set TF's op thread pools; False when the runtime already started (then they stay as they are)."""
    import tensorflow as tf

    try:
        if intra:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
        if inter:
            tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:  # "cannot be modified after initialization"
        return False
    return True


_ACTIVE: list[Plan] = []


def compile_options() -> dict:
    """Extra `model.compile` arguments of the plan in force (none outside `accelerated`)."""
    if not _ACTIVE:
        return {}
    plan = _ACTIVE[-1]
    return {"jit_compile": plan.jit_compile, "steps_per_execution": plan.steps_per_execution}


@contextlib.contextmanager
def accelerated(plan: Plan) -> Iterator[Plan]:
    """Run the block under `plan`: threads, the Keras dtype policy and compile options; policy restored."""
    import keras

    set_threads(plan.intra_threads, plan.inter_threads)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(plan.precision)
    _ACTIVE.append(plan)
    try:
        yield plan
    finally:
        _ACTIVE.pop()
        keras.config.set_dtype_policy(previous)


def _float32_config(obj):
    """A Keras config with every layer's dtype policy replaced by float32."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "DTypePolicy" and isinstance(obj.get("config"), dict):
            return {**obj, "config": {**obj["config"], "name": "float32"}}
        return {k: _float32_config(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_float32_config(v) for v in obj]
    return obj


def float32_copy(model):
    """The same model (architecture and weights) computing in float32 throughout, not compiled.

    A model trained under mixed_bfloat16 keeps float32 variables, so the copy has exactly its
    weights; only the layers' compute dtype changes. Saved models are read with compile=False
    everywhere (evaluate, register, the service). A float32 model is returned as it is.
    """
    import keras

    if all(layer.dtype_policy.name == "float32" for layer in _all_layers(model)):
        return model
    config = _float32_config(keras.saving.serialize_keras_object(model))
    config.pop("compile_config", None)
    copy = keras.saving.deserialize_keras_object(config)
    copy.set_weights(model.get_weights())
    return copy


def _all_layers(model) -> list:
    out = []
    for layer in model.layers:
        out.append(layer)
        if hasattr(layer, "layers"):
            out.extend(_all_layers(layer))
    return out


def describe(plan: Plan) -> str:
    """One line for logs: CPU, precision and why, XLA, threads."""
    threads = f"intra {plan.intra_threads or 'default'} / inter {plan.inter_threads or 'default'}"
    return (f"{plan.cpu_model}: precision {plan.precision} ({plan.reason}), XLA {'on' if plan.jit_compile else 'off'}, "
            f"oneDNN {'on' if plan.onednn else 'off'}, threads {threads}, steps/execution {plan.steps_per_execution}")


def hardware_summary(recorded: dict | None) -> dict:
    """What the registry keeps about how a model was trained: CPU model, precision (and why), XLA,
    oneDNN, threads. `recorded` is tune.json's "acceleration" (a Plan); older runs have none."""
    if not recorded:
        return {"cpu_model": "not recorded", "precision": "float32 (not recorded)"}
    keys = ("cpu_model", "cpu_bf16", "cpu_amx", "precision", "reason", "jit_compile", "onednn", "intra_threads",
            "inter_threads", "steps_per_execution")
    return {k: recorded[k] for k in keys if k in recorded}


def epoch_timer():
    """A Keras callback whose `epoch_times` are the wall seconds of each epoch of the last fit. It
    deep-copies to itself, so keras-tuner's per-trial copies of the search callbacks report here."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epoch_times: list[float] = []
            self._started = 0.0

        def __deepcopy__(self, memo):
            return self

        def on_train_begin(self, logs=None):
            self.epoch_times = []

        def on_epoch_begin(self, epoch, logs=None):
            self._started = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_times.append(round(time.monotonic() - self._started, 3))

    return EpochTimer()

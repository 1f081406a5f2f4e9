"""Acceleration plan: the precision chosen for a CPU's flags (a pure function), the scoped dtype
policy and compile options, and the float32 copy every saved model goes through. No timing here."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from training import acceleration, models
from training.acceleration import CpuInfo, choose_jit, choose_precision, parse_cpuinfo
from training.cli import UserError

EPYC = CpuInfo("AMD EPYC", 2, frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}))
XEON_AMX = CpuInfo("Intel(R) Xeon(R) Platinum 8481C", 8, frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}))
AMX_ONLY = CpuInfo("Intel(R) Xeon(R)", 4, frozenset({"avx512f", "amx_bf16", "amx_tile"}))
OLD_XEON = CpuInfo("Intel(R) Xeon(R) CPU @ 2.20GHz", 2, frozenset({"avx2", "avx512f", "avx512_vnni"}))


@pytest.mark.parametrize("cpu, onednn, expected", [
    (EPYC, True, "mixed_bfloat16"),
    (XEON_AMX, True, "mixed_bfloat16"),
    (AMX_ONLY, True, "mixed_bfloat16"),
    (OLD_XEON, True, "float32"),  # AVX-512 without bf16: emulated bf16 is slower than float32
    (EPYC, False, "float32"),  # oneDNN off: no native bf16 kernels
    (CpuInfo("unknown CPU", 1, frozenset()), True, "float32"),
])
def test_auto_precision_follows_the_cpu_flags(cpu, onednn, expected):
    precision, reason = choose_precision("auto", cpu, onednn)
    assert precision == expected
    assert reason.startswith("auto: ")
    if expected == "mixed_bfloat16":
        assert "bf16" in reason and "oneDNN is on" in reason


def test_explicit_precision_is_obeyed_and_a_wrong_one_is_refused():
    assert choose_precision("float32", XEON_AMX, True)[0] == "float32"
    assert choose_precision("mixed_bfloat16", OLD_XEON, False)[0] == "mixed_bfloat16"
    with pytest.raises(UserError, match="GLASSES_PRECISION='fp16'.*auto, float32, mixed_bfloat16"):
        choose_precision("fp16", EPYC, True)
    assert choose_jit("auto") is False and choose_jit("on") is True and choose_jit("off") is False
    with pytest.raises(UserError, match="GLASSES_JIT"):
        choose_jit("yes")


def test_cpuinfo_parsing_x86_and_arm():
    x86 = "processor\t: 0\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512f avx512_bf16\n\n" \
          "processor\t: 1\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512f avx512_bf16\n"
    cpu = parse_cpuinfo(x86)
    assert (cpu.model, cpu.cores, cpu.bf16, cpu.amx) == ("AMD EPYC", 2, True, False)
    assert cpu.generation == "family 26 model 2"  # "AMD EPYC" alone names Zen 1 and Zen 5 alike
    arm = "processor\t: 0\nFeatures\t: fp asimd bf16\nprocessor\t: 1\nFeatures\t: fp asimd bf16\n"
    assert parse_cpuinfo(arm).cores == 2 and "bf16" in parse_cpuinfo(arm).flags and parse_cpuinfo(arm).generation == ""
    assert acceleration.cpu_info().model  # this machine: some name, never an exception


def _plan(precision: str, **changes) -> acceleration.Plan:
    plan = acceleration.Plan(precision=precision, jit_compile=False, intra_threads=0, inter_threads=0,
                             steps_per_execution=1, cpu_model="test", cpu_bf16=True, cpu_amx=False, onednn=True,
                             reason="test")
    return dataclasses.replace(plan, **changes)


def test_accelerated_scopes_the_policy_and_compile_options():
    before = keras.config.dtype_policy().name
    assert acceleration.compile_options() == {}
    with pytest.raises(RuntimeError, match="boom"):
        with acceleration.accelerated(_plan("mixed_bfloat16", jit_compile=True, steps_per_execution=4)):
            assert keras.config.dtype_policy().name == "mixed_bfloat16"
            assert acceleration.compile_options() == {"jit_compile": True, "steps_per_execution": 4}
            raise RuntimeError("boom")
    assert keras.config.dtype_policy().name == before
    assert acceleration.compile_options() == {}


@pytest.mark.parametrize("build", [
    lambda: models.build_from_hyperparameters(models.PAPER_BEST_HYPERPARAMETERS, "paper", 32),
    lambda: models.build_from_hyperparameters({"decay_steps": 100}, "celeba", 32),  # nested trunk, frozen luma
])
def test_a_bf16_trained_model_keeps_a_float32_output_and_is_saved_as_float32(build, tmp_path):
    with acceleration.accelerated(_plan("mixed_bfloat16")):
        mixed = build()
    assert mixed.layers[1].dtype_policy.name == "mixed_bfloat16"
    assert mixed.outputs[0].dtype == "float32"  # the sigmoid (and so the loss) stays float32
    copy = acceleration.float32_copy(mixed)
    assert {layer.dtype_policy.name for layer in acceleration._all_layers(copy)} == {"float32"}
    for a, b in zip(mixed.get_weights(), copy.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    copy.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    assert {layer.dtype_policy.name for layer in acceleration._all_layers(loaded)} == {"float32"}
    reference = build()  # float32 from the start, same weights: the same function exactly
    reference.set_weights(mixed.get_weights())
    x = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), reference.predict(x, verbose=0))
    float_model = build()
    assert acceleration.float32_copy(float_model) is float_model


def test_hardware_summary_for_the_registry():
    plan = _plan("mixed_bfloat16")
    summary = acceleration.hardware_summary(plan.as_dict())
    assert summary["cpu_model"] == "test" and summary["precision"] == "mixed_bfloat16"
    assert acceleration.hardware_summary(None)["precision"] == "float32 (not recorded)"
    assert "precision mixed_bfloat16" in acceleration.describe(plan)

"""``--dtype auto``: bfloat16 where the hardware multiplies bf16 natively, float32 where it is emulated."""

from __future__ import annotations

import builtins
import io

import pytest
import torch

from segearth import options
from segearth.options import DType

ZEN3 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
# "avx512_bf16" in another line (a bug-report field, say) is not a flag of this CPU.
ICE_LAKE = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\nbugs\t\t: avx512_bf16_is_not_here\n"


@pytest.mark.parametrize(("cpuinfo", "expected"), [
    (ZEN3, torch.float32), (ICE_LAKE, torch.float32), (ZEN4, torch.bfloat16), (SAPPHIRE_RAPIDS, torch.bfloat16),
])
def test_auto_is_bfloat16_only_on_cpus_with_native_bf16(monkeypatch, cpuinfo, expected):
    real_open = builtins.open

    def fake_open(path, *args, **kwargs):
        return io.StringIO(cpuinfo) if str(path) == "/proc/cpuinfo" else real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    assert DType.auto.torch("cpu") is expected
    assert DType.auto.torch("cuda") is torch.bfloat16
    assert DType.float32.torch("cpu") is torch.float32  # an explicit choice is never overridden


def test_no_cpuinfo_means_float32(monkeypatch):
    def no_file(path, *args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(builtins, "open", no_file)
    assert not options.cpu_has_native_bf16()


def test_auto_keeps_small_models_in_float32_on_native_bf16_cpus(monkeypatch):
    monkeypatch.setattr(options, "cpu_has_native_bf16", lambda: True)
    assert DType.auto.torch("cpu", parameters=options.AUTO_BF16_MIN_PARAMETERS - 1) is torch.float32
    assert DType.auto.torch("cpu", parameters=options.AUTO_BF16_MIN_PARAMETERS) is torch.bfloat16
    assert DType.auto.torch("cpu") is torch.bfloat16  # unknown size: counted as large
    assert DType.bfloat16.torch("cpu", parameters=10) is torch.bfloat16  # an explicit choice stands


def test_the_built_in_model_answers_in_float32_on_every_cpu(monkeypatch):
    """bf16 gains the nano nothing (overhead-bound) and rounds its masks: auto must not pick it."""
    from segearth.api import load_predictor
    from segearth.checkpoint_io import stored_parameters
    from segearth.weights import resolve_model

    monkeypatch.setattr(options, "cpu_has_native_bf16", lambda: True)
    assert 0 < stored_parameters(resolve_model(None)) < options.AUTO_BF16_MIN_PARAMETERS
    predictor, _ = load_predictor(None)
    assert {p.dtype for p in predictor.model.parameters()} == {torch.float32}

"""Opt-in int8 inference on CPU: dynamic quantisation of every ``nn.Linear`` (``--quantize int8``).

Weights of Linear layers are stored as int8 with one scale per tensor; activations are quantised on
the fly per batch. That is where the released model's bulk lives (Phi-1.5: 1.4 B of its parameters,
and Swin's attention/MLP projections); convolutions, embeddings and norms stay in float32. It trades a
little agreement with the float32 mask for speed and memory — ``benchmarks/quantize.py`` measures both
on real scenes.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .errors import InputError


def quantize_int8(model: nn.Module) -> nn.Module:
    """``model`` with its Linear layers dynamically quantised to int8 in place (CPU, float32 models only).

    In place: a copy would hold a second float32 model while quantising (at the released size, loading
    plus quantising peaked 14.2 GB above the baseline with a copy, 8.7 GB in place; benchmarks/released.py)."""
    params = list(model.parameters())
    if any(p.device.type != "cpu" for p in params):
        raise InputError("--quantize int8 runs on the CPU only; drop --device or --quantize")
    if any(p.is_floating_point() and p.dtype != torch.float32 for p in params):
        raise InputError("--quantize int8 needs --dtype float32 (it replaces the float Linear weights by int8)")
    with warnings.catch_warnings():
        # torch.ao's dynamic quantisation is deprecated in favour of torchao, which is not a dependency here.
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)

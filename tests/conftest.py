"""Shared test helpers: paths to ../shared and tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PARITY_SMALL = SHARED / "fixtures" / "official" / "parity_small"
FULL_KEYS = SHARED / "fixtures" / "official" / "full_keys.json"


@pytest.fixture
def parity_dir() -> Path:
    if not (PARITY_SMALL / "io.safetensors").is_file():
        pytest.skip(f"official parity fixture not found at {PARITY_SMALL}")
    return PARITY_SMALL


@pytest.fixture
def small_model():
    from segearth import SegEarthR1, small_config

    torch.manual_seed(0)
    return SegEarthR1(small_config()).eval()

"""Smoke test of the built-in segearth-nano on the example scene (what the README's main job runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from segearth.cli import app
from segearth.weights import builtin_model_path

from conftest import SHARED

REPO_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "dubai_tile6_part001.jpg"
TRUTH = SHARED / "data" / "dubai" / "tile_6" / "image_part_001_mask.png"
WATER = (0xE2, 0xA9, 0x29)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def test_builtin_nano_answers_on_the_example_scene(tmp_path):
    try:
        builtin_model_path()
    except FileNotFoundError as exc:
        pytest.fail(f"the built-in model must ship with the package: {exc}")
    question = "where could a boat travel?"
    result = CliRunner().invoke(app, ["predict", str(REPO_EXAMPLE), question, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    masks = list(tmp_path.glob("*_mask.tif"))
    assert len(masks) == 1 and len(list(tmp_path.glob("*_preview.png"))) == 1
    with rasterio.open(masks[0]) as src:
        predicted = src.read(1) > 0
    assert predicted.shape == (838, 859)
    if TRUTH.is_file():  # the real label of this validation scene: the answer is its water
        from PIL import Image

        truth = np.all(np.asarray(Image.open(TRUTH).convert("RGB")) == WATER, axis=-1)
        assert _iou(predicted, truth) > 0.8, "nano should find the water of its example scene (IoU 0.97 when shipped)"

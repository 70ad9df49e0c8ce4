"""Smoke test of the built-in segearth-nano on the example scene (what the README's main job runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
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


def test_int8_quantisation_agrees_with_float32_on_the_example_scene():
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    from segearth.api import load
    from segearth.geo.read import read_overview

    image = read_overview(REPO_EXAMPLE, 384).image
    fp32, int8 = load(dtype="float32"), load(quantize="int8")
    assert any(isinstance(m, DynamicQuantizedLinear) for m in int8.predictor.model.modules())
    for question in ("where could a boat travel?", "the buildings"):
        a, b = fp32.predict(image, question).mask, int8.predict(image, question).mask
        assert 0.02 < a.mean() < 0.98  # a real answer, not an empty or full mask that agrees by default
        assert _iou(a, b) > 0.9, question  # measured 0.91-1.0 over 12 answers (benchmarks/quantize.py)


def test_nano_batched_questions_equal_one_by_one():
    # MiniLM has no prefix cache: a batch runs the whole prompt per question on the image's features
    # repeated as views, through the mask decoder's shared-memory path.
    from segearth.api import load_predictor
    from segearth.geo.read import read_overview

    predictor, _ = load_predictor(dtype="float32")
    predictor.set_image(read_overview(REPO_EXAMPLE, 384).image)
    questions = ["where could a boat travel?", "the buildings", "the roads"]
    batched = predictor.predict_batch(questions)
    for question, answer in zip(questions, batched, strict=True):
        single = predictor.predict(question)
        assert answer.question == question
        assert torch.allclose(answer.low_res_logits, single.low_res_logits, atol=1e-4)


def test_int8_refuses_what_it_cannot_do():
    from segearth.api import load

    with pytest.raises(ValueError, match="float32"):
        load(dtype="bfloat16", quantize="int8")
    with pytest.raises(ValueError, match="quantize must be one of"):
        load(quantize="int4")


DATA = SHARED / "data"


@pytest.mark.needs_shared(DATA / "fair_buildings", DATA / "sentinel2_brandenburg")
def test_builtin_nano_answers_on_two_sources_it_never_saw():
    """Smoke test across sources: a Kampala drone mosaic (buildings) and the held-out east of the
    Sentinel-2 scene (water), both in the cross-domain validation split, scored as `segearth eval` does."""
    from segearth.api import load_predictor
    from segearth.data.multisource import MultiSource
    from segearth.evaluate import evaluate

    wanted = {"fair_buildings/kampala-z21-1238448-1046528#building/referring0/seen",
              "sentinel2_brandenburg/x1152y0/rgb#water/referring0/seen"}
    samples = [s for s in MultiSource(DATA, "val").samples if s.id in wanted]
    assert len(samples) == 2
    predictor, _ = load_predictor()
    result = evaluate(predictor, samples)
    for record in result.records:  # measured 0.71 vs 0.24 and 0.66 vs 0.17 when shipped
        everything = record.baseline_iou["everything"]
        assert record.iou > everything + 0.15, (record.id, record.iou, everything)

"""Official metrics (spec §6) on hand-computed cases, and the paper-protocol letterbox."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segearth.geo.letterbox import Letterbox
from segearth.metrics import (
    SampleScore,
    SegmentationMeter,
    letterbox_mask,
    nearest_indices,
    protocol_target,
    score_sample,
    summarize,
)


def _mask(shape: tuple[int, int], *pixels: tuple[int, int]) -> np.ndarray:
    m = np.zeros(shape, dtype=np.uint8)
    for r, c in pixels:
        m[r, c] = 1
    return m


def test_both_empty_scores_one() -> None:
    score = score_sample(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8))
    assert score == SampleScore(iou=1.0, intersection=0, union=0)


def test_empty_target_with_prediction_scores_zero() -> None:
    score = score_sample(_mask((4, 4), (0, 0), (1, 1)), np.zeros((4, 4), np.uint8))
    assert score == SampleScore(iou=0.0, intersection=0, union=2)


def test_empty_prediction_with_target_scores_zero() -> None:
    score = score_sample(np.zeros((4, 4), bool), _mask((4, 4), (2, 2)))
    assert score == SampleScore(iou=0.0, intersection=0, union=1)


def test_partial_overlap_uses_official_epsilon() -> None:
    pred = _mask((4, 4), (0, 0), (0, 1), (1, 0), (1, 1))
    target = _mask((4, 4), (1, 0), (1, 1), (2, 0), (2, 1))
    score = score_sample(pred, target)
    assert (score.intersection, score.union) == (2, 6)
    assert score.iou == pytest.approx(2 / (6 + 1e-5), rel=1e-6)
    assert score.iou < 1 / 3  # the epsilon lowers it, never raises it


def test_target_values_other_than_one_are_background() -> None:
    # torch.histc(bins=2, min=0, max=1) drops a GT value of 2 from the target and intersection bins.
    target = np.array([[1, 2], [0, 0]], np.uint8)
    pred = np.array([[1, 1], [0, 0]], np.uint8)
    score = score_sample(pred, target)
    assert (score.intersection, score.union) == (1, 2) and score.iou == pytest.approx(1 / (2 + 1e-5))


def test_accepts_tensors_and_leading_singleton_dims() -> None:
    pred = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    target = torch.tensor([[[1, 0], [0, 1]]], dtype=torch.uint8)  # [1, H, W] like the official GT
    score = score_sample(pred, target)
    assert (score.intersection, score.union) == (2, 3)


def test_rejects_non_binary_prediction_and_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="threshold"):
        score_sample(np.full((2, 2), 0.7), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="does not match"):
        score_sample(np.zeros((2, 2)), np.zeros((2, 3)))


def test_summary_giou_ciou_precision() -> None:
    meter = SegmentationMeter()
    meter.update(np.zeros((2, 2)), np.zeros((2, 2)), group="absent")  # 1.0, I=0, U=0
    meter.update(_mask((2, 2), (0, 0)), np.zeros((2, 2)), group="absent")  # 0.0, I=0, U=1
    meter.update(_mask((2, 2), (0, 0), (0, 1)), _mask((2, 2), (0, 0)), group="referring")  # ~0.5, I=1, U=2
    out = meter.summary()
    half = 1 / (2 + 1e-5)
    assert out["n"] == 3
    assert out["gIoU"] == pytest.approx((1.0 + 0.0 + half) / 3, rel=1e-6)
    assert out["cIoU"] == pytest.approx(1 / 3)
    # Strict ">" : 0.4999975 is not above 0.5; only the empty/empty sample passes every threshold.
    assert [out[f"Pr@{t}"] for t in (0.5, 0.6, 0.7, 0.8, 0.9)] == [pytest.approx(1 / 3)] * 5
    groups = meter.group_summaries()
    assert groups["absent"]["gIoU"] == 0.5 and groups["referring"]["n"] == 1


def test_precision_threshold_is_strict() -> None:
    scores = [SampleScore(0.5, 1, 2), SampleScore(0.9, 9, 10), SampleScore(0.95, 19, 20)]
    out = summarize(scores)
    assert out["Pr@0.5"] == pytest.approx(2 / 3)
    assert out["Pr@0.9"] == pytest.approx(1 / 3)


def test_empty_summary_is_nan() -> None:
    out = SegmentationMeter().summary()
    assert out["n"] == 0 and math.isnan(out["gIoU"]) and math.isnan(out["cIoU"])


@pytest.mark.parametrize(
    ("hw", "expected"),
    [
        ((600, 800), (768, 1024, 128, 0)),
        ((800, 800), (1024, 1024, 0, 0)),
        ((512, 512), (1024, 1024, 0, 0)),
        ((2061, 2149), (982, 1024, 21, 0)),  # int(2061 * 1024 / 2149) = 982 (truncated, not rounded)
        ((1000, 333), (1024, 340, 0, 342)),
        ((3, 1024), (3, 1024, 510, 0)),  # odd padding 1021: top = 1021 // 2
    ],
)
def test_letterbox_geometry(hw: tuple[int, int], expected: tuple[int, int, int, int]) -> None:
    geo = Letterbox.fit(*hw, 1024)
    assert (geo.new_h, geo.new_w, geo.top, geo.left) == expected


def test_letterbox_mask_places_nearest_resized_content() -> None:
    mask = np.zeros((2, 4), np.uint8)
    mask[0, 0] = 1  # top-left source pixel → top-left 2×2 block of the 4×8 resized content
    canvas = letterbox_mask(mask, size=8)
    assert canvas.shape == (8, 8) and canvas.dtype == np.uint8
    expected = np.zeros((8, 8), np.uint8)
    expected[2:4, 0:2] = 1  # new_h = 4, top = (8 - 4) // 2 = 2
    np.testing.assert_array_equal(canvas, expected)


def test_nearest_indices_match_opencv() -> None:
    np.testing.assert_array_equal(nearest_indices(2, 4), [0, 0, 1, 1])
    np.testing.assert_array_equal(nearest_indices(4, 2), [0, 2])
    # Values recorded from cv2.resize(INTER_NEAREST), OpenCV 4.14 and 5.0: OpenCV multiplies by a
    # double reciprocal, so where dst * src / dst_len is an exact integer it can land one lower
    # than integer floor division (17 * 6 / 34 = 3 → 2; 9 * 14 / 18 = 7 → 6).
    assert nearest_indices(6, 34)[17] == 2
    assert nearest_indices(14, 18)[9] == 6


def test_protocol_target() -> None:
    mask = _mask((3, 5), (1, 2))
    assert protocol_target(mask, "native") is mask
    assert protocol_target(mask, "paper").shape == (1024, 1024)
    assert protocol_target(mask, "paper").sum() == letterbox_mask(mask).sum() > 0
    with pytest.raises(ValueError, match="unknown protocol"):
        protocol_target(mask, "coco")  # type: ignore[arg-type]

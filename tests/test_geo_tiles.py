"""Tile planning, logit stitching and block-wise upsampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segearth.geo.tiles import LogitStitcher, iter_blocks, plan_tiles, ramp_weight, upsample_blocks


def coverage(windows: list, width: int, height: int) -> np.ndarray:
    count = np.zeros((height, width), np.int32)
    for w in windows:
        count[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] += 1
    return count


@pytest.mark.parametrize("width, height", [(1000, 700), (256, 256), (257, 900), (100, 50)])
def test_plan_tiles_covers_raster_with_full_size_tiles(width: int, height: int) -> None:
    windows = plan_tiles(width, height, tile_size=256, overlap=32)
    assert (coverage(windows, width, height) >= 1).all()
    for w in windows:
        assert w.width == min(256, width) and w.height == min(256, height)
        assert w.col_off + w.width <= width and w.row_off + w.height <= height
    assert max(w.col_off + w.width for w in windows) == width


def test_plan_tiles_rejects_bad_overlap() -> None:
    with pytest.raises(ValueError, match="overlap"):
        plan_tiles(100, 100, 64, 64)


def test_iter_blocks_partitions_exactly() -> None:
    assert (coverage(list(iter_blocks(1000, 777, 300)), 1000, 777) == 1).all()


def test_ramp_weight_positive_and_flat_inside() -> None:
    w = ramp_weight(64, 80, 16)
    assert w.min() > 0 and w.max() == 1.0 and w[32, 40] == 1.0


def test_stitcher_constant_and_ramp(tmp_path: Path) -> None:
    width, height = 700, 500
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = 0.01 * xx - 0.02 * yy + 3.0
    windows = plan_tiles(width, height, 256, 64)
    with LogitStitcher(width, height, ramp=64, workdir=tmp_path) as constant, \
            LogitStitcher(width, height, ramp=64, workdir=tmp_path) as smooth:
        for w in windows:
            rows = slice(w.row_off, w.row_off + w.height)
            cols = slice(w.col_off, w.col_off + w.width)
            constant.add(w, np.full((w.height, w.width), -2.5, np.float32))
            smooth.add(w, ramp[rows, cols])
        assert len(list(tmp_path.iterdir())) == 2  # accumulators live on disk, not in RAM
        for (window, a), (_, b) in zip(constant.blocks(256), smooth.blocks(256), strict=True):
            rows = slice(window.row_off, window.row_off + window.height)
            cols = slice(window.col_off, window.col_off + window.width)
            np.testing.assert_allclose(a, -2.5, rtol=1e-6)
            np.testing.assert_allclose(b, ramp[rows, cols], atol=1e-4)
    assert not any(tmp_path.iterdir())  # temporary files removed on close


def test_stitcher_fill_and_shape_checks(tmp_path: Path) -> None:
    with LogitStitcher(20, 10, workdir=tmp_path) as stitcher:
        stitcher.add(plan_tiles(20, 10, 10)[0], np.ones((10, 10), np.float32))
        (_, block), = stitcher.blocks(fill=-1.0)
        assert (block[:, :10] == 1).all() and (block[:, 10:] == -1).all()
        with pytest.raises(ValueError, match="do not match"):
            stitcher.add(plan_tiles(20, 10, 10)[0], np.ones((5, 5), np.float32))


@pytest.mark.parametrize("out_w, out_h, block", [(250, 190, 64), (33, 1000, 128), (8, 6, 1024)])
def test_upsample_blocks_matches_interpolate(out_w: int, out_h: int, block: int) -> None:
    low = np.random.default_rng(0).standard_normal((13, 17)).astype(np.float32)
    full = F.interpolate(torch.from_numpy(low)[None, None], size=(out_h, out_w), mode="bilinear",
                         align_corners=False)[0, 0].numpy()
    stitched = np.full((out_h, out_w), np.nan, np.float32)
    for w, values in upsample_blocks(low, out_w, out_h, block):
        assert values.shape == (w.height, w.width)
        stitched[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] = values
    np.testing.assert_allclose(stitched, full, atol=1e-5)

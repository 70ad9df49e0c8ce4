"""Training augmentation: masks stay aligned with their images, draws are reproducible, scope is enforced."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from segearth.data.sample import Sample
from segearth.train.augment import AugmentedDataset, AugmentParams, apply_params
from segearth.train.config import ConfigError, load_train_config
from segearth.train.data import BatchOrder


def blocks_scene(height: int = 300, width: int = 420) -> tuple[np.ndarray, np.ndarray]:
    """A scene whose target is exactly where the red channel is bright (24-pixel blocks)."""
    rng = np.random.default_rng(1)
    mask = np.kron(rng.integers(0, 2, (height // 24 + 1, width // 24 + 1)), np.ones((24, 24)))[:height, :width]
    mask = mask.astype(np.uint8)
    image = np.full((height, width, 3), 60, np.uint8)
    image[..., 0] = np.where(mask > 0, 230, 30)
    return image, mask


def disagreement(image: np.ndarray, mask: np.ndarray) -> float:
    red_says = image[..., 0] > image[..., 1]  # target blocks are redder than green; padding is neither
    return float((red_says != (mask > 0)).mean())


@pytest.mark.parametrize("params", [
    AugmentParams(None, 0, False, 1.0, 1.0),
    AugmentParams((10, 40, 200), 1, False, 1.15, 0.9),
    AugmentParams((0, 0, 300), 2, True, 0.85, 1.1),
    AugmentParams((50, 200, 150), 3, True, 1.0, 1.0),
])
def test_mask_follows_the_image(params):
    image, mask = blocks_scene()
    out_image, out_mask = apply_params(image, mask, params, 128)
    assert out_image.shape == (128, 128, 3) and out_image.dtype == np.uint8
    assert out_mask.shape == (128, 128) and set(np.unique(out_mask)) <= {0, 1}
    # Only block edges may disagree (bilinear image vs nearest mask).
    assert disagreement(out_image, out_mask) < 0.08
    assert disagreement(out_image, np.rot90(out_mask)) > 0.3  # the check does see a misplaced mask


def test_turns_and_flips_move_image_and_mask_together():
    image, mask = blocks_scene()
    plain_image, plain_mask = apply_params(image, mask, AugmentParams((0, 0, 256), 0, False, 1.0, 1.0), 64)
    turned_image, turned_mask = apply_params(image, mask, AugmentParams((0, 0, 256), 1, True, 1.0, 1.0), 64)
    assert np.array_equal(turned_mask, np.rot90(plain_mask)[:, ::-1])
    assert np.array_equal(turned_image, np.rot90(plain_image)[:, ::-1])


def constant(mask: np.ndarray) -> Callable[[], np.ndarray]:
    return lambda: mask


def scene_samples(root: Path, n: int = 3) -> list[Sample]:
    samples = []
    for i in range(n):
        image, mask = blocks_scene(200 + 40 * i, 260)
        path = root / f"scene{i}.png"
        Image.fromarray(image).save(path)
        samples.append(Sample(f"s{i}", path, "the red blocks", "referring", None, constant(mask), "red"))
    return samples


def test_draws_depend_only_on_seed_epoch_and_index(tmp_path):
    samples = scene_samples(tmp_path)
    first, second = AugmentedDataset(samples, 96, seed=7), AugmentedDataset(samples, 96, seed=7)
    a, b = first[(1, 4)], second[(1, 4)]  # a fresh dataset (a resumed run, another worker) draws the same
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    epochs = [first[(1, e)].image for e in range(6)]
    assert any(not np.array_equal(epochs[0], other) for other in epochs[1:])
    ex = first[(2, 0)]
    assert ex.index == 2 and ex.id == "s2" and ex.question == "the red blocks"
    assert disagreement(ex.image, ex.mask) < 0.1


def test_batch_order_with_epochs_keeps_the_same_indices():
    plain = list(BatchOrder(10, 2, 1, 0, seed=3, start=0, stop=12))
    paired = list(BatchOrder(10, 2, 1, 0, seed=3, start=0, stop=12, with_epoch=True))
    assert [[i for i, _ in batch] for batch in paired] == plain
    assert [batch[0][1] for batch in paired] == [0] * 5 + [1] * 5 + [2] * 2


def test_augment_is_refused_where_crops_change_the_meaning(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "small"},
                                    "data": {"name": "rrsisd", "root": str(tmp_path), "augment": True}}))
    message = "data.augment: only for landcover, multisource; crops and flips change what rrsisd"
    with pytest.raises(ConfigError, match=message):
        load_train_config(path)
    with pytest.raises(ConfigError, match="augment_min_crop"):
        load_train_config(path, ["data.name=landcover", "data.augment_min_crop=0"])

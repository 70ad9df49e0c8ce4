"""The multi-source training set: question bank, labelled scenes with unknown pixels, their loss and score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segearth.config import LossConfig
from segearth.data.questions import ClassQuestions, parse_bank, question_bank
from segearth.data.sample import UNKNOWN, Sample
from segearth.data.scenes import LabelledScene, index_labels, scene_questions
from segearth.metrics import score_known, score_sample
from segearth.train.augment import AugmentedDataset, AugmentParams, apply_params, draw_params
from segearth.train.losses import mask_loss_terms

from conftest import SHARED

DATA = SHARED / "data"


# --------------------------------------------------------------------------- question bank

def test_packaged_bank_has_every_class_with_heldout_phrasings():
    bank = question_bank()
    for name in ("building", "road", "water", "vegetation", "land", "farmland", "grass", "trees"):
        table = bank[name]
        assert table.heldout_referring and table.heldout_reasoning
        seen = {q.lower() for q in table.referring + table.reasoning}
        assert not seen & {q.lower() for q in table.heldout_referring + table.heldout_reasoning}
    assert "Where could a boat travel?" in bank["water"].reasoning


def test_bank_refuses_a_heldout_phrasing_seen_in_training():
    entry = {"answer": "Water.", "referring": ["the water"], "reasoning": ["Where could a boat travel?"],
             "heldout": {"referring": ["the lake"], "reasoning": ["where could a boat travel?"]}}
    with pytest.raises(ValueError, match="held-out phrasings also seen"):
        parse_bank({"water": entry})
    with pytest.raises(ValueError, match="unknown keys"):
        parse_bank({"water": {**entry, "heldout": {"referring": ["x"], "reasoning": ["y"]}, "extra": 1}})


# --------------------------------------------------------------------------- scenes → questions

def toy_scene(labels: dict[str, np.ndarray], complete: tuple[str, ...] = ()) -> LabelledScene:
    image = np.zeros((*next(iter(labels.values())).shape, 3), np.uint8)
    return LabelledScene("toy/1", "toy", "toy", Path("toy.png"), lambda: image, lambda: labels,
                         classes=tuple(labels), complete=complete)


def test_questions_follow_presence_absence_and_unknown():
    water = np.zeros((40, 40), np.uint8)
    water[:10] = 1
    building = np.zeros((40, 40), np.uint8)  # complete and empty: absent
    trees = np.full((40, 40), UNKNOWN, np.uint8)  # nothing known: no question at all
    grass = np.full((40, 40), UNKNOWN, np.uint8)
    grass[:20] = 0  # known and empty, but not complete: not "absent" either
    scene = toy_scene({"water": water, "building": building, "trees": trees, "grass": grass}, complete=("building",))
    samples = scene_questions(scene, seed=0, heldout=False, reasoning_per_class=2, min_fraction=0.01)
    kinds = {(s.class_name, s.kind) for s in samples}
    assert kinds == {("water", "referring"), ("water", "reasoning"), ("building", "absent")}
    bank = question_bank()
    for s in samples:
        table = bank[s.class_name or ""]
        assert s.phrasing == "seen" and s.question in table.referring + table.reasoning
        assert s.image_key == "toy/1" and s.source == "toy"
    absent = next(s for s in samples if s.kind == "absent")
    assert absent.load_mask().sum() == 0


def test_a_weak_class_known_almost_everywhere_and_empty_is_absent():
    dry = np.zeros((40, 40), np.uint8)  # an index says "surely not water" on every pixel
    patchy = np.zeros((40, 40), np.uint8)
    patchy[:4] = UNKNOWN  # 10 % between the thresholds: too little known to call it absent
    image = np.zeros((40, 40, 3), np.uint8)
    scene = LabelledScene("toy/w", "toy", "toy", Path("toy.png"), lambda: image,
                          lambda: {"water": dry, "vegetation": patchy}, classes=("water", "vegetation"),
                          weak=("water", "vegetation"))
    samples = scene_questions(scene, seed=0, heldout=False, reasoning_per_class=1, min_fraction=0.01)
    assert {(s.class_name, s.kind) for s in samples} == {("water", "absent")}


def test_validation_asks_each_question_seen_and_heldout():
    water = np.zeros((40, 40), np.uint8)
    water[:10] = 1
    samples = scene_questions(toy_scene({"water": water}), seed=0, heldout=None, reasoning_per_class=2,
                              min_fraction=0.01)
    table: ClassQuestions = question_bank()["water"]
    held = [s for s in samples if s.phrasing == "heldout"]
    seen = [s for s in samples if s.phrasing == "seen"]
    assert len(held) == len(seen) == 3
    assert all(s.question in table.heldout_referring + table.heldout_reasoning for s in held)
    assert all(s.question in table.referring + table.reasoning for s in seen)


def test_index_labels_leave_the_middle_unknown():
    index = np.array([-0.5, 0.05, 0.5])
    assert index_labels(index, 0.2, 0.0).tolist() == [0, UNKNOWN, 1]
    assert index_labels(index, -0.2, 0.3, greater=False).tolist() == [1, UNKNOWN, 0]


# --------------------------------------------------------------------------- unknown pixels: loss, score, augment

def test_unknown_pixels_do_not_change_the_loss():
    cfg = LossConfig()
    torch.manual_seed(0)
    logits = [torch.randn(2, 1, 16, 16) for _ in range(2)]
    targets = (torch.rand(2, 1, 64, 64) > 0.5).float()
    points = [torch.rand(2, 500, 2) for _ in range(2)]
    plain = mask_loss_terms(logits, targets, cfg, points)
    # Unknown on the right half: logits there must not matter; with none, the official terms.
    partial_targets = targets.clone()
    partial_targets[..., 32:] = UNKNOWN
    changed = [lg.clone() for lg in logits]
    for lg in changed:
        lg[..., 9:] = torch.randn_like(lg[..., 9:]) * 10
    a = mask_loss_terms(logits, partial_targets, cfg, points)
    b = mask_loss_terms(changed, partial_targets, cfg, points)
    for key in plain:
        assert torch.allclose(a[key], b[key]), key
    assert any(not torch.allclose(plain[k], a[k]) for k in plain)
    assert torch.equal(mask_loss_terms(logits, targets, cfg, points)["loss_mask"], plain["loss_mask"])


def test_score_known_ignores_predictions_on_unknown_pixels():
    target = np.array([[1, 0, UNKNOWN, UNKNOWN]], np.uint8)
    pred = np.array([[True, False, True, True]])
    assert score_known(pred, target).iou == pytest.approx(1.0, abs=1e-4)
    assert score_sample(pred, target).iou < 0.5
    assert score_known(pred, target).union == 1


def test_augmented_dataset_keeps_unknown_pixels():
    mask = np.zeros((100, 120), np.uint8)
    mask[:, :40] = 1
    mask[:, 80:] = UNKNOWN
    image = np.full((100, 120, 3), 90, np.uint8)
    sample = Sample("s", Path("x.png"), "the water", "referring", None, lambda: mask, "water",
                    image_loader=lambda: image, image_id="x")
    data = AugmentedDataset([sample], 64, seed=0, sensor=True)
    for epoch in range(6):
        out = data[(0, epoch)].mask
        assert set(np.unique(out)) <= {0, 1, UNKNOWN}
    whole = apply_params(image, mask, AugmentParams(None, 0, False, 1.0, 1.0), 64)[1]
    assert (whole == UNKNOWN).any() and (whole == 1).any()


def test_sensor_draws_are_reproducible_and_change_the_look():
    draws = [draw_params(np.random.default_rng([0, e, 1]), 200, 200, 0.3, 0.2, sensor=True) for e in range(40)]
    again = [draw_params(np.random.default_rng([0, e, 1]), 200, 200, 0.3, 0.2, sensor=True) for e in range(40)]
    assert draws == again
    assert any(d.grey for d in draws) and any(d.haze > 0 for d in draws) and any(d.resample < 1 for d in draws)
    rng = np.random.default_rng(3)
    image = rng.integers(0, 120, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    grey, _ = apply_params(image, mask, AugmentParams(None, 0, False, 1.0, 1.0, grey=True), 64)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    hazy, _ = apply_params(image, mask, AugmentParams(None, 0, False, 1.0, 1.0, haze=0.4), 64)
    clear, _ = apply_params(image, mask, AugmentParams(None, 0, False, 1.0, 1.0), 64)
    assert hazy.mean() > clear.mean() + 20 and hazy.std() < clear.std()


# --------------------------------------------------------------------------- the real sources

@pytest.mark.needs_shared(DATA / "fair_buildings", DATA / "sentinel2_brandenburg", DATA / "geotiff", DATA / "dubai")
def test_splits_never_share_a_place_and_val_is_cross_domain():
    from segearth.data.multisource import MultiSource

    train, val = MultiSource(DATA, "train"), MultiSource(DATA, "val")
    train_places = {s.place for s in train.scenes}
    val_places = {s.place for s in val.scenes}
    assert not train_places & val_places
    assert {s.source for s in val.scenes} >= {"fair_buildings", "sentinel2_brandenburg", "naip", "spacenet_pan"}
    assert not {s.source for s in val.scenes} & {"dubai", "massachusetts_roads"}
    assert all(s.place == "kampala" for s in val.scenes if s.source == "fair_buildings")
    assert {s.phrasing for s in val.samples} == {"seen", "heldout"}
    assert {s.phrasing for s in train.samples} == {"seen"}
    # Absent questions exist in training (Dubai, fAIr negatives) and are sampled more often.
    assert sum(s.kind == "absent" for s in train.samples) > 100
    # Each repeat of a training question asks it with another draw of the bank's seen phrasings.
    assert len({s.id for s in train.samples}) == len(train.samples)
    repeats: dict[str, list[str]] = {}
    for s in train.samples:
        repeats.setdefault(s.id.split("~")[0], []).append(s.question)
    repeated = [qs for qs in repeats.values() if len(qs) > 1]
    assert sum(len(set(qs)) > 1 for qs in repeated) > 0.8 * len(repeated)  # by chance a draw repeats one
    bank = question_bank()
    assert all(s.question in bank[s.class_name].referring + bank[s.class_name].reasoning for s in train.samples)


@pytest.mark.needs_shared(DATA / "sentinel2_brandenburg")
def test_sentinel2_labels_are_unknown_off_the_polygons():
    from segearth.data.sentinel2 import sentinel2_scenes

    scenes = sentinel2_scenes(DATA / "sentinel2_brandenburg", "val")
    assert {s.id.rsplit("/", 1)[1] for s in scenes} == {"rgb", "irrg"}
    labels = scenes[0].labels()
    for name in ("farmland", "trees", "grass", "water"):
        m = labels[name]
        assert (m == 1).any() and (m == 0).any() and (m == UNKNOWN).any(), name
    for name in ("farmland", "trees", "grass"):  # OSM polygons cover a third of the scene
        assert (labels[name] == UNKNOWN).mean() > 0.3, name
    # Water is mostly known through NDWI, and every OSM water polygon is water.
    assert (labels["water"] == UNKNOWN).mean() < 0.3
    # Vegetation: forest is vegetation, water (even inside a forest polygon) is not, NDVI decides part
    # of the rest.
    assert (labels["vegetation"][(labels["trees"] == 1) & (labels["water"] != 1)] == 1).all()
    assert (labels["vegetation"][labels["water"] == 1] == 0).all()
    assert (labels["vegetation"] == 1).any() and (labels["vegetation"] == 0).any()
    rgb, irrg = scenes[0].image(), scenes[1].image()
    assert rgb.shape == irrg.shape == (384, 384, 3) and not np.array_equal(rgb, irrg)


@pytest.mark.needs_shared(DATA / "fair_buildings")
def test_fair_vegetation_is_green_and_never_a_building():
    from segearth.data.fair_buildings import fair_scenes
    from segearth.data.scenes import excess_green

    scene = next(s for s in fair_scenes(DATA / "fair_buildings") if s.id.endswith("zanzibar-z21-1277168-1083840"))
    labels, image = scene.labels(), scene.image()
    vegetation, building = labels["vegetation"], labels["building"]
    assert (vegetation[building == 1] == 0).all()
    assert 0.2 < (vegetation == 1).mean() < 0.9 and (vegetation == 0).any() and (vegetation == UNKNOWN).any()
    green = image[vegetation == 1].astype(int)
    assert (green[:, 1] > green[:, 0]).mean() > 0.95 and (green[:, 1] > green[:, 2]).mean() > 0.95
    pixel = np.array([[[40, 120, 30], [128, 128, 128], [0, 0, 0]]], np.uint8)  # leaf, grey roof, black
    assert excess_green(pixel)[0, 0] > 0.3 and excess_green(pixel)[0, 1] == 0 and excess_green(pixel)[0, 2] == 0


@pytest.mark.needs_shared(DATA / "geotiff")
def test_spacenet_footprints_are_the_building_target():
    from segearth.data.geotiff_samples import geotiff_scenes

    scenes = {s.id: s for s in geotiff_scenes(DATA / "geotiff")}
    pan = [s for k, s in scenes.items() if k.startswith("geotiff/spacenet_pan/")]
    assert len(pan) == 4
    total = sum(int((s.labels()["building"] == 1).sum()) for s in pan)
    assert 0.02 < total / (900 * 900) < 0.08  # 43 footprints, about 4 % of the scene
    image = pan[0].image()
    assert (image[..., 0] == image[..., 2]).all()  # panchromatic: grey


def test_samples_of_one_raster_window_share_an_image_key():
    scene = toy_scene({"water": np.ones((8, 8), np.uint8)})
    other = LabelledScene("toy/2", "toy", "toy", Path("toy.png"), scene.image, scene.labels, classes=("water",))
    a = scene_questions(scene, seed=0, heldout=False, reasoning_per_class=1, min_fraction=0.01)
    b = scene_questions(other, seed=0, heldout=False, reasoning_per_class=1, min_fraction=0.01)
    assert {s.image_key for s in a} == {"toy/1"} and {s.image_key for s in b} == {"toy/2"}

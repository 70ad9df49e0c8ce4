"""Dataset readers: miniature official layouts built in tmp_path, and the real land-cover data."""

from __future__ import annotations

import hashlib
import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning

from segearth.data import CLASS_QUESTIONS, NO_TARGET_ANSWER, RRSISD, EarthReason, LandCover, RefSegRS
from segearth.data.io import read_gray, read_rgb
from segearth.data.landcover import DUBAI_COLOURS, class_fractions, discover_scenes
from segearth.data.rrsisd import decode_segmentation

REAL_DATA = (Path(__file__).parents[1] / "../shared/data").resolve()
needs_real_data = pytest.mark.needs_shared(REAL_DATA)


def write_raster(path: Path, bands: np.ndarray) -> Path:
    """Write ``[C, H, W]`` uint8/uint16 to ``path``; the format follows the suffix (PNG, JPEG, GTiff)."""
    driver = {".png": "PNG", ".jpg": "JPEG", ".tif": "GTiff"}[path.suffix.lower()]
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(
            path,
            "w",
            driver=driver,
            width=bands.shape[2],
            height=bands.shape[1],
            count=bands.shape[0],
            dtype=bands.dtype.name,
        ) as ds:
            ds.write(bands)
    return path


def random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (3, h, w), dtype=np.uint8)


# --------------------------------------------------------------------------- image reading


def test_reads_palette_grey_and_16bit_rasters(tmp_path: Path) -> None:
    palette = Image.new("P", (3, 2))
    palette.putpalette([0, 0, 0, 200, 10, 20])
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "p.png")
    assert read_rgb(tmp_path / "p.png")[0, 1].tolist() == [200, 10, 20]
    assert read_gray(tmp_path / "p.png")[0].tolist() == [0, 68, 0]  # luma of the palette colour, not index 1
    grey = write_raster(tmp_path / "g.png", np.full((1, 2, 2), 77, np.uint8))
    assert read_rgb(grey).shape == (2, 2, 3) and (read_rgb(grey) == 77).all()
    deep = write_raster(tmp_path / "d.tif", np.full((3, 2, 2), 0x1234, np.uint16))
    assert (read_rgb(deep) == 0x12).all()  # cv2.imread keeps the high byte


@needs_real_data
def test_jpeg_decoding_matches_opencv() -> None:
    # SHA-256 of cv2.cvtColor(cv2.imread(path), COLOR_BGR2RGB), OpenCV 4.14: model inputs stay bit-identical.
    image = read_rgb(REAL_DATA / "dubai/tile_1/image_part_001.jpg")
    assert hashlib.sha256(image.tobytes()).hexdigest() == (
        "a610dd29b43623cfd1d97c256e8341911c8c1d3c4fd5a7204b1282835ada1b49"
    )


# --------------------------------------------------------------------------- EarthReason


@pytest.fixture
def earthreason_root(tmp_path: Path) -> Path:
    split = tmp_path / "rs_reason_seg" / "RSReasonSeg" / "val"
    write_raster(split / "images" / "a.jpg", random_rgb(20, 30))
    write_raster(split / "images" / "b.PNG", random_rgb(16, 16, seed=1))
    label = np.zeros((1, 20, 30), np.uint8)
    label[0, 5:10, 5:15] = 255
    label[0, 0, 0] = 3  # any non-zero value is target
    write_raster(split / "labels" / "a.png", label)
    write_raster(split / "labels" / "b.png", np.zeros((1, 16, 16), np.uint8))
    (split / "QAs").mkdir()
    qa_a = {"questions": ["Where could a ship dock?", "Which area serves boats?"], "answer": ["The harbour."], "x": 1}
    (split / "QAs" / "a.json").write_text(json.dumps(qa_a))
    (split / "QAs" / "b.txt").write_text(json.dumps({"questions": ["Where is the airport?"], "answer": []}))
    return tmp_path


def test_earthreason_loads_every_question(earthreason_root: Path) -> None:
    ds = EarthReason(earthreason_root, "val")
    assert [(s.id, s.kind) for s in ds] == [("val/a#0", "reasoning"), ("val/a#1", "reasoning"), ("val/b#0", "absent")]
    assert ds[1].question == "Which area serves boats?" and ds[1].answer == "The harbour."
    assert ds[2].answer == NO_TARGET_ANSWER
    mask = ds[0].load_mask()
    assert mask.shape == (20, 30) and mask.dtype == np.uint8 and mask.sum() == 51
    assert ds[2].load_mask().sum() == 0
    assert ds[0].load_image().shape == (20, 30, 3)
    assert len(EarthReason(earthreason_root, "val", first_question_only=True)) == 2


def test_earthreason_pairs_by_name_and_reports_mismatch(earthreason_root: Path) -> None:
    split = earthreason_root / "rs_reason_seg" / "RSReasonSeg" / "val"
    (split / "labels" / "b.png").rename(split / "labels" / "c.png")
    with pytest.raises(ValueError, match=r"(?s)images/.*\bb\b.*labels/.*\bc\b"):
        EarthReason(earthreason_root, "val")


def test_earthreason_missing_folder_and_bad_qa(earthreason_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match="'train' split"):
        EarthReason(earthreason_root, "train")
    split = earthreason_root / "rs_reason_seg" / "RSReasonSeg" / "val"
    (split / "QAs" / "a.json").write_text(json.dumps({"answer": ["x"]}))
    with pytest.raises(ValueError, match="a.json.*questions"):
        EarthReason(earthreason_root, "val")


# --------------------------------------------------------------------------- RRSIS-D


def _box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


@pytest.fixture
def rrsisd_root(tmp_path: Path) -> Path:
    from pycocotools import mask as coco_mask

    base = tmp_path / "rs_ref_seg" / "RRSIS-D"
    write_raster(base / "images" / "rrsisd" / "JPEGImages" / "07.jpg", random_rgb(30, 40))
    write_raster(base / "images" / "rrsisd" / "JPEGImages" / "09.jpg", random_rgb(24, 24, seed=2))
    rle_mask = np.zeros((24, 24), np.uint8, order="F")
    rle_mask[3:9, 4:20] = 1
    compressed = coco_mask.encode(rle_mask)
    compressed["counts"] = compressed["counts"].decode()
    instances = {
        "images": [
            {"id": 7, "file_name": "07.jpg", "height": 30, "width": 40},
            {"id": 9, "file_name": "09.jpg", "height": 24, "width": 24},
        ],
        "annotations": [
            # two overlapping parts: the union must stay binary
            {"id": 100, "image_id": 7, "category_id": 1, "segmentation": [_box(2, 2, 20, 15), _box(10, 10, 30, 25)]},
            {"id": 101, "image_id": 9, "category_id": 2, "segmentation": {"size": [24, 24], "counts": [30, 5, 541]}},
            {"id": 102, "image_id": 9, "category_id": 2, "segmentation": compressed},
        ],
        "categories": [{"id": 1, "name": "ship"}, {"id": 2, "name": "storage tank"}],
    }

    def ref(ref_id: int, ann_id: int, image_id: int, split: str, *sentences: tuple[int, str]) -> dict:
        return {
            "ref_id": ref_id,
            "ann_id": ann_id,
            "image_id": image_id,
            "category_id": 1 if image_id == 7 else 2,
            "split": split,
            "sentences": [
                {"raw": t, "sent": t.lower(), "tokens": t.lower().split(), "sent_id": i} for i, t in sentences
            ],
        }

    refs = [  # ref ids deliberately differ from image ids (the official loader's lookup would break)
        ref(0, 100, 7, "val", (0, "The ship on the left"), (1, "left ship")),
        ref(1, 101, 9, "val", (2, "a tank")),
        ref(2, 102, 9, "testA", (3, "tank")),
        ref(3, 100, 7, "train", (4, "boat")),
    ]
    (base / "rrsisd").mkdir()
    (base / "rrsisd" / "instances.json").write_text(json.dumps(instances))
    with (base / "rrsisd" / "refs(unc).p").open("wb") as fh:
        pickle.dump(refs, fh)
    return tmp_path


def test_rrsisd_splits_and_sentences(rrsisd_root: Path) -> None:
    val = RRSISD(rrsisd_root, "val")
    assert [(s.id, s.question, s.class_name) for s in val] == [
        ("0#0", "The ship on the left", "ship"),
        ("0#1", "left ship", "ship"),
        ("1#2", "a tank", "storage tank"),
    ]
    assert all(s.kind == "referring" and s.answer is None for s in val)
    assert len(RRSISD(rrsisd_root, "val", first_sentence_only=True)) == 2
    assert [s.question for s in RRSISD(rrsisd_root, "test")] == ["tank"]
    assert [s.question for s in RRSISD(rrsisd_root, "train")] == ["boat"]


def test_rrsisd_masks_at_real_size_and_binary(rrsisd_root: Path) -> None:
    val = RRSISD(rrsisd_root, "val")
    ship = val[0].load_mask()
    assert ship.shape == (30, 40) and set(np.unique(ship)) == {0, 1}
    parts = [decode_segmentation([_box(2, 2, 20, 15)], 30, 40), decode_segmentation([_box(10, 10, 30, 25)], 30, 40)]
    np.testing.assert_array_equal(ship, parts[0] | parts[1])
    assert (parts[0] & parts[1]).any()  # the parts do overlap, and the union stayed 0/1
    assert val[0].image_path.name == "07.jpg" and val[0].load_image().shape == (30, 40, 3)
    tank = val[2].load_mask()  # uncompressed RLE, column-major: 30 zeros, then 5 ones in column 1
    assert tank.shape == (24, 24) and tank.sum() == 5 and tank[6:11, 1].all()
    compressed = RRSISD(rrsisd_root, "test")[0].load_mask()
    assert compressed.sum() == 6 * 16 and compressed[3:9, 4:20].all()


def test_rrsisd_layout_errors(rrsisd_root: Path, tmp_path: Path) -> None:
    base = rrsisd_root / "rs_ref_seg" / "RRSIS-D"
    (base / "images" / "rrsisd" / "JPEGImages" / "09.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="09.jpg"):
        RRSISD(rrsisd_root, "val")
    (base / "rrsisd" / "refs(unc).p").unlink()
    with pytest.raises(FileNotFoundError, match=r"refs\(unc\)\.p"):
        RRSISD(rrsisd_root, "val")
    with pytest.raises(FileNotFoundError, match="rrsisd"):
        RRSISD(tmp_path / "nowhere", "val")


def test_rrsisd_refuses_pickles_that_import_code(rrsisd_root: Path) -> None:
    refs_path = rrsisd_root / "rs_ref_seg" / "RRSIS-D" / "rrsisd" / "refs(unc).p"
    refs_path.write_bytes(pickle.dumps([Path("x")]))
    with pytest.raises(pickle.UnpicklingError, match="only plain data"):
        RRSISD(rrsisd_root, "val")


# --------------------------------------------------------------------------- RefSegRS


def test_refsegrs_loads_phrases_images_and_masks(tmp_path: Path) -> None:
    base = tmp_path / "rs_ref_seg" / "RefSegRS"
    for image_id in (3, 12):
        write_raster(base / "images" / f"{image_id}.tif", random_rgb(12, 12, seed=image_id))
        mask = np.zeros((1, 12, 12), np.uint8)
        mask[0, :4, :] = 255
        mask[0, 11, 11] = 128  # not 255 → background
        write_raster(base / "masks" / f"{image_id}.tif", mask)
    (base / "output_phrase_val.txt").write_text("id phrase\n3 road along the river\n\n12   vehicle on the left \n")
    ds = RefSegRS(tmp_path, "val")
    assert [(s.id, s.question, s.kind) for s in ds] == [
        ("val/3@L2", "road along the river", "referring"),
        ("val/12@L4", "vehicle on the left", "referring"),
    ]
    mask = ds[0].load_mask()
    assert mask.dtype == np.uint8 and mask.sum() == 48 and mask[11, 11] == 0
    assert ds[1].load_image().shape == (12, 12, 3)
    (base / "masks" / "12.tif").unlink()
    with pytest.raises(FileNotFoundError, match="line 4.*12.tif"):
        RefSegRS(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="output_phrase_test.txt"):
        RefSegRS(tmp_path, "test")


# --------------------------------------------------------------------------- land cover, synthetic


def _hex_rgb(colour: int) -> tuple[int, int, int]:
    return (colour >> 16) & 255, (colour >> 8) & 255, colour & 255


@pytest.fixture
def synthetic_dubai(tmp_path: Path) -> Path:
    """One 20×20 Dubai-layout scene: land, water, 1 pixel of road (below 0.5 %), no building/vegetation."""
    mask = np.zeros((3, 20, 20), np.uint8)
    mask[:, :, :] = np.array(_hex_rgb(DUBAI_COLOURS["land"]))[:, None, None]
    mask[:, :8, :] = np.array(_hex_rgb(DUBAI_COLOURS["water"]))[:, None, None]
    mask[:, 19, 19] = _hex_rgb(DUBAI_COLOURS["road"])
    write_raster(tmp_path / "dubai" / "tile_9" / "scene_mask.png", mask)
    write_raster(tmp_path / "dubai" / "tile_9" / "scene.jpg", random_rgb(20, 20))
    return tmp_path


def test_landcover_kinds_and_absent_targets(synthetic_dubai: Path) -> None:
    ds = LandCover(synthetic_dubai, reasoning_per_class=4)
    by_class: dict[str, list[str]] = {}
    for s in ds:
        assert s.class_name is not None
        by_class.setdefault(s.class_name, []).append(s.kind)
    assert by_class == {
        "land": ["referring"] + ["reasoning"] * 4,
        "water": ["referring"] + ["reasoning"] * 4,
        "building": ["absent"],
        "vegetation": ["absent"],
    }  # road has one pixel: present but too small to ask about, and not absent either
    water = next(s for s in ds if s.class_name == "water")
    assert water.load_mask().sum() == 8 * 20
    absent = next(s for s in ds if s.kind == "absent")
    assert absent.answer == NO_TARGET_ANSWER and absent.load_mask().shape == (20, 20) and absent.load_mask().sum() == 0
    questions = [s.question for s in ds if s.class_name == "land" and s.kind == "reasoning"]
    assert len(set(questions)) == 4 and set(questions) <= set(CLASS_QUESTIONS["land"].reasoning)


def test_landcover_layout_errors(synthetic_dubai: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no scenes"):
        LandCover(tmp_path / "empty")
    (synthetic_dubai / "dubai" / "tile_9" / "scene.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="scene_mask.png: no image"):
        LandCover(synthetic_dubai)


def test_landcover_rejects_other_palettes(tmp_path: Path) -> None:
    write_raster(tmp_path / "tile_1" / "x_mask.png", np.full((3, 4, 4), 7, np.uint8))
    write_raster(tmp_path / "tile_1" / "x.jpg", random_rgb(4, 4))
    with pytest.raises(ValueError, match="outside the Dubai palette"):
        len(LandCover(tmp_path))


def test_question_tables_have_many_distinct_phrasings() -> None:
    assert set(CLASS_QUESTIONS) >= {"building", "land", "road", "vegetation", "water", "farmland", "grass", "trees"}
    for table in CLASS_QUESTIONS.values():
        assert len(set(table.reasoning)) == len(table.reasoning) >= 6
        assert table.referring and table.answer


# --------------------------------------------------------------------------- land cover, real data


@pytest.fixture
def real_subset(tmp_path: Path) -> Path:
    """A data root linking a few real scenes, so the tests decode only a handful of masks."""
    picks = ["dubai/tile_1/image_part_001", "dubai/tile_7/image_part_002", "massachusetts_roads/10978945"]
    for pick in picks:
        for suffix in (".jpg", "_mask.png"):
            link = tmp_path / (pick + suffix)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(REAL_DATA / (pick + suffix))
    return tmp_path


@needs_real_data
@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_real_class_masks_match_colours(real_subset: Path) -> None:
    ds = LandCover(real_subset)
    water = next(s for s in ds if s.class_name == "water" and s.kind == "referring")
    with rasterio.open(water.image_path.with_name(water.image_path.stem + "_mask.png")) as src:
        rgb = src.read()
    expected = np.all(rgb == np.array(_hex_rgb(0xE2A929))[:, None, None], axis=0)
    mask = water.load_mask()
    assert mask.dtype == np.uint8 and mask.shape == expected.shape and expected.any()
    np.testing.assert_array_equal(mask, expected.astype(np.uint8))
    assert water.load_image().shape == (*mask.shape, 3)
    road = next(s for s in ds if s.id.startswith("massachusetts_roads/") and s.kind == "reasoning")
    with rasterio.open(real_subset / "massachusetts_roads" / "10978945_mask.png") as src:
        np.testing.assert_array_equal(road.load_mask(), (src.read(1) == 255).astype(np.uint8))
    assert road.class_name == "road" and road.question in CLASS_QUESTIONS["road"].reasoning


@needs_real_data
def test_real_samples_deterministic_and_seeded(real_subset: Path) -> None:
    def key(ds: LandCover) -> list[tuple[str, str, str]]:
        return [(s.id, s.kind, s.question) for s in ds]

    first = key(LandCover(real_subset, seed=3))
    assert first == key(LandCover(real_subset, seed=3))
    assert first != key(LandCover(real_subset, seed=4))
    assert {kind for _, kind, _ in first} <= {"referring", "reasoning", "absent"}
    fractions = class_fractions(discover_scenes(real_subset)[0])
    assert sum(fractions.values()) == pytest.approx(1.0, abs=0.05)  # unlabeled pixels are few


@needs_real_data
def test_real_splits_are_disjoint_and_cover_everything() -> None:
    # Only lists files: no image or mask is decoded.
    scenes = {s.id: s for s in LandCover(REAL_DATA, "all").scenes}
    train = {s.id for s in LandCover(REAL_DATA, "train").scenes}
    val = {s.id for s in LandCover(REAL_DATA, "val").scenes}
    assert train and val and not train & val and train | val == set(scenes)
    assert len([i for i in scenes if i.startswith("dubai/")]) == 54
    assert len([i for i in scenes if i.startswith("massachusetts_roads/")]) == 23
    val_tiles = {scenes[i].group for i in val if i.startswith("dubai/")}
    train_tiles = {scenes[i].group for i in train if i.startswith("dubai/")}
    assert val_tiles and not val_tiles & train_tiles  # whole tiles move together
    assert {s.id for s in LandCover(REAL_DATA, "val", seed=1).scenes} != val

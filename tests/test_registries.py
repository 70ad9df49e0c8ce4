"""The preset and dataset registries: every entry resolves, unknown names are one line listing the names."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from segearth.config import SegEarthConfig, config_from_json, official_config_json
from segearth.data.registry import DATASETS, DatasetSpec, get_dataset, register_dataset
from segearth.data.sample import Sample
from segearth.evaluate import DatasetName, load_samples
from segearth.presets import PRESETS, Preset, get_preset, preset_names, register_preset
from segearth.train.config import ConfigError, load_train_config
from segearth.weights import BUILTIN_NAMES, builtin_model_path

import test_datasets
import test_evaluate

earthreason_root = test_datasets.earthreason_root
rrsisd_root = test_datasets.rrsisd_root
synthetic_dubai = test_datasets.synthetic_dubai
refsegrs_root = test_evaluate.refsegrs_root

# A miniature official layout of every registered dataset, with a split it has.
LAYOUTS = {"earthreason": ("earthreason_root", "val"), "rrsisd": ("rrsisd_root", "val"),
           "refsegrs": ("refsegrs_root", "val"), "landcover": ("synthetic_dubai", "all"),
           "multisource": ("synthetic_dubai", "train")}


# --------------------------------------------------------------------------------------------- presets


def test_unknown_preset_is_one_line_listing_the_names():
    with pytest.raises(ValueError) as err:
        get_preset("nano2")
    message = str(err.value)
    assert "\n" not in message and "'nano2'" in message
    assert all(name in message for name in preset_names())


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_resolves_and_its_config_round_trips(name: str):
    preset = get_preset(name)
    assert name in (preset.name, *preset.aliases) and preset.description
    cfg = preset.config(None, 50297)
    assert isinstance(cfg, SegEarthConfig)
    if preset.default_image_size is not None:
        assert cfg.image_size == preset.default_image_size
        assert preset.config(128, 50297).image_size == 128
    assert config_from_json(json.loads(json.dumps(official_config_json(cfg)))) == cfg


@pytest.mark.parametrize("name", [n for n in PRESETS if not PRESETS[n].needs_tokenizer])
def test_preset_tokenizer_fits_its_config(name: str):
    preset = get_preset(name)
    tokenizer = preset.tokenizer(None)
    assert preset.config(None, len(tokenizer)).llm.vocab_size in (len(tokenizer), len(tokenizer) - 1)  # MiniLM: + [SEG]


def test_builtin_models_are_the_presets_with_weights():
    assert set(BUILTIN_NAMES) == {"nano", "segearth-nano"}
    assert builtin_model_path("segearth-nano") == builtin_model_path("nano") == PRESETS["nano"].weights
    # the shipped config.json is exactly the preset's config, plus the presence threshold calibrated for
    # these weights (a property of the trained weights, not of the architecture: a fresh nano has none)
    raw = json.loads((PRESETS["nano"].weights / "config.json").read_text())
    shipped = config_from_json(raw)
    assert dataclasses.replace(shipped, presence_threshold=None) == PRESETS["nano"].config(None, 0)
    assert PRESETS["nano"].config(None, 0).presence_threshold is None
    assert shipped.presence_threshold is not None and 0.5 <= shipped.presence_threshold < 1
    with pytest.raises(ValueError, match="unknown built-in model 'small'; available: nano, segearth-nano"):
        builtin_model_path("small")


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="'nano' is already registered"):
        register_preset(Preset("nano", "again", PRESETS["nano"].config, PRESETS["nano"].tokenizer))
    with pytest.raises(ValueError, match="'landcover' is already registered"):
        register_dataset(DatasetSpec("landcover", object, "reasoning", "again", ("all",)))


def test_train_accepts_every_preset_and_refuses_others(tmp_path: Path):
    for name in preset_names():
        tokenizer = [f"model.tokenizer={tmp_path}"] if get_preset(name).needs_tokenizer else []
        cfg = load_train_config(None, [f"model.name={name}", f"data.root={tmp_path}", *tokenizer])
        assert cfg.model.name == name
    with pytest.raises(ConfigError, match=r"model.name: 'tiny' is neither a preset \(small, nano, segearth-nano, "
                                          r"released\) nor an existing checkpoint folder"):
        load_train_config(None, ["model.name=tiny", f"data.root={tmp_path}"])
    with pytest.raises(ConfigError, match="model.tokenizer: the 'released' preset needs a tokenizer folder"):
        load_train_config(None, ["model.name=released", f"data.root={tmp_path}"])
    with pytest.raises(ConfigError, match="model.image_size: the 'released' preset has a fixed input size"):
        load_train_config(None, ["model.name=released", "model.image_size=128", f"model.tokenizer={tmp_path}",
                                 f"data.root={tmp_path}"])


# -------------------------------------------------------------------------------------------- datasets


def test_unknown_dataset_is_one_line_listing_the_names(tmp_path: Path):
    with pytest.raises(ValueError) as err:
        get_dataset("coco")
    message = str(err.value)
    assert "\n" not in message and "'coco'" in message and all(name in message for name in DATASETS)
    with pytest.raises(ConfigError, match="data.name: unknown dataset 'coco'; datasets: earthreason, rrsisd"):
        load_train_config(None, ["data.name=coco", f"data.root={tmp_path}"])


def test_every_dataset_has_a_layout_here():
    assert set(LAYOUTS) == set(DATASETS) == {d.value for d in DatasetName}


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_dataset_resolves_and_reads_its_layout(name: str, tmp_path: Path, request: pytest.FixtureRequest):
    spec = get_dataset(name)
    fixture, split = LAYOUTS[name]
    root = request.getfixturevalue(fixture)
    assert spec.task in ("reasoning", "referring") and split in spec.splits and spec.description
    samples = spec.samples(root, split)
    assert samples and all(isinstance(s, Sample) for s in samples)
    assert any(s.class_name for s in samples) == spec.classes
    assert [s.id for s in load_samples(name, split, root)] == [s.id for s in samples]  # what eval reads
    if spec.first_question_option is not None:  # the official sample set: fewer samples, same images
        first = spec.samples(root, split, first_question_only=True)
        assert 0 < len(first) < len(samples)
    else:
        with pytest.raises(ValueError, match="--first-question-only applies to earthreason, rrsisd, not to"):
            load_samples(name, split, root, first_question_only=True)
    # training reads it through the same entry; augmentation only where the entry allows it
    overrides = [f"data.name={name}", f"data.root={root}", "data.augment=true"]
    if spec.augment:
        assert load_train_config(None, overrides).data.augment
    else:
        with pytest.raises(ConfigError, match=f"data.augment: only for landcover, multisource; .* {name} expressions"):
            load_train_config(None, overrides)


def test_train_configs_shipped_name_registered_entries():
    paths = sorted(Path(__file__).resolve().parents[1].glob("configs/train/*.yaml"))
    raws = {path: yaml.safe_load(path.read_text()) for path in paths}
    # A recipe's later stage starts from a checkpoint an earlier shipped config writes.
    stages = {raw["log"]["output_dir"] for raw in raws.values() if "log" in raw and "output_dir" in raw["log"]}
    for path, raw in raws.items():
        name = raw["model"]["name"]
        assert raw["data"]["name"] in DATASETS, path
        assert name in PRESETS or name.startswith("/path/to/") or str(Path(name).parent) in stages, path

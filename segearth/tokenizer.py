"""Tokenizers that need no download.

Released checkpoints carry their own tokenizer files (loaded with ``AutoTokenizer`` from the
checkpoint folder). Tiny test models and the official parity fixtures use a byte-level tokenizer with
no merges — every UTF-8 byte is one token, ids in GPT-2 byte order, then ``<|endoftext|>``,
``[PAD]`` and ``[SEG]`` (ids 256, 257, 258) — which :func:`byte_level_tokenizer` rebuilds.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from .errors import InputError
from .modeling.prompt import EOS, SEG


def _gpt2_byte_symbols() -> list[int]:
    """Bytes in GPT-2's order: printable ones first, the rest after."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    return printable + [b for b in range(256) if b not in printable]


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """The 259-token byte-level tokenizer of the parity fixtures and tiny models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    printable_count = 188
    vocab = {}
    for token_id, byte in enumerate(_gpt2_byte_symbols()):
        # GPT-2 maps non-printable bytes to code points 256.. in increasing byte order.
        symbol = chr(byte) if token_id < printable_count else chr(256 + token_id - printable_count)
        vocab[symbol] = token_id
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=2048)
    fast.add_special_tokens({"eos_token": EOS, "pad_token": "[PAD]"})
    fast.add_tokens([SEG])
    return fast


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a checkpoint folder (fast), with a clear error when it is absent."""
    folder = Path(folder)
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise FileNotFoundError(f"no tokenizer files in {folder} (expected tokenizer.json or tokenizer_config.json)")
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # AutoTokenizer warns that model_type "llava_phi" is not its own
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
    finally:
        hf_logging.set_verbosity(previous)
    if tok.convert_tokens_to_ids(SEG) in (None, tok.unk_token_id):
        raise InputError(f"the tokenizer in {folder} has no {SEG} token; it is not a SegEarth-R1 tokenizer")
    return tok

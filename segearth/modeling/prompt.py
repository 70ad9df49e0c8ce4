"""Prompt construction and embedding splicing, exactly as the official ``llava_phi`` template.

A prompt is text with placeholders. Each text piece between placeholders is tokenised *separately*
(``add_special_tokens=False``, no BOS) — piece boundaries change the BPE, so this matters. Then the
placeholders are replaced by embeddings when the LLM input sequence is built:

    <image>  -> the visual tokens of the image
    <refer>  -> embed(" " + description) + embed([SEG])    (flagged: these rows are pooled)
    <answer> -> embed(answer) + embed([SEG])                (EarthReason teacher forcing)
    <seg>    -> dropped (the released model does not use a [SEG] query)

Because the LLM is causal, nothing after the description can change the mask.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F

from ..errors import InputError

IMAGE_TOKEN = -200
SEG_TOKEN = -201
REFER_TOKEN = -204
ANSWER_TOKEN = -205
IGNORE_INDEX = -100
PLACEHOLDERS = {"<image>": IMAGE_TOKEN, "<seg>": SEG_TOKEN, "<refer>": REFER_TOKEN, "<answer>": ANSWER_TOKEN}

EOS = "<|endoftext|>"
SEG = "[SEG]"
SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)
NO_TARGET_ANSWER = "There is no target object in the image."

Task = Literal["referring", "reasoning"]
_INSTRUCTION = {
    "referring": "This is an image <image>, Please doing Referring Segmentation "
                 "according to the following instruction:",
    "reasoning": "This is an image <image>, Please doing Reasoning Segmentation "
                 "according to the following instruction:",
}
# Assistant turns of the official datasets (training, RefSegRS eval, EarthReason).
ASSISTANT_REFERRING = "\nSure. It is <seg>. "
ASSISTANT_REASONING = "Sure, It is <seg>. \n<answer>."


class Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...
    def convert_tokens_to_ids(self, token: str) -> int: ...


def render_prompt(task: Task, assistant: str | None = None) -> str:
    """The llava_phi (LLAMA-2 style) conversation for one user turn and one assistant turn."""
    if assistant is None:
        assistant = ASSISTANT_REASONING if task == "reasoning" else ASSISTANT_REFERRING
    user = _INSTRUCTION[task] + "\n<refer>"
    return f"[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\n{user} [/INST] {assistant} {EOS}"


def tokenize_prompt(prompt: str, tokenizer: Tokenizer) -> list[int]:
    """Token ids with placeholders as their negative ids; text pieces encoded separately."""
    pattern = "(" + "|".join(re.escape(p) for p in PLACEHOLDERS) + ")"
    ids: list[int] = []
    for piece in re.split(pattern, prompt):
        if piece in PLACEHOLDERS:
            ids.append(PLACEHOLDERS[piece])
        elif piece:
            ids.extend(tokenizer.encode(piece, add_special_tokens=False))
    return ids


def instruction_labels(prompt: str, ids: Sequence[int], tokenizer: Tokenizer) -> list[int]:
    """LM training labels: the instruction part ignored, as the official ``preprocess_llama2`` does.

    The official code assumes a BOS token that is never added and compensates with ``- 2``; the
    resulting boundary is reproduced here, quirks included.
    """
    labels = list(ids)
    sep = "[/INST] "
    cur = 1
    labels[:cur] = [IGNORE_INDEX] * min(cur, len(labels))
    for rnd in prompt.split(EOS):
        if rnd == "":
            break
        parts = rnd.split(sep)
        if len(parts) != 2:
            break
        round_len = len(tokenize_prompt(rnd, tokenizer))
        instruction_len = len(tokenize_prompt(parts[0] + sep, tokenizer)) - 2
        labels[cur : cur + instruction_len] = [IGNORE_INDEX] * len(labels[cur : cur + instruction_len])
        cur += round_len
    labels[cur:] = [IGNORE_INDEX] * len(labels[cur:])
    if cur != len(ids):  # the official code silently drops supervision on a length mismatch
        labels = [IGNORE_INDEX] * len(ids)
    return labels


def description_ids(text: str, tokenizer: Tokenizer) -> list[int]:
    """Ids substituted for <refer>: ``encode(" " + text) + [SEG]`` (note the leading space)."""
    return tokenizer.encode(" " + text, add_special_tokens=False) + [tokenizer.convert_tokens_to_ids(SEG)]


def answer_ids(answer: str, tokenizer: Tokenizer) -> list[int]:
    """Ids substituted for <answer>: ``encode(answer) + [SEG]`` (no leading space)."""
    return tokenizer.encode(answer, add_special_tokens=False) + [tokenizer.convert_tokens_to_ids(SEG)]


@dataclass
class PromptInputs:
    """One prompt with its side inputs, ready for :func:`splice_batch`."""

    input_ids: list[int]
    refer_ids: list[int]
    answer_ids: list[int] | None
    labels: list[int] | None = None


def build_prompt(
    question: str,
    tokenizer: Tokenizer,
    task: Task = "reasoning",
    answer: str | None = None,
    assistant: str | None = None,
    with_labels: bool = False,
) -> PromptInputs:
    """Prompt ids, description ids and (reasoning task) answer ids for one question."""
    if not question.strip():
        raise InputError("the question is empty")
    prompt = render_prompt(task, assistant)
    ids = tokenize_prompt(prompt, tokenizer)
    ans = None
    if ANSWER_TOKEN in ids:
        ans = answer_ids(answer if answer is not None else NO_TARGET_ANSWER, tokenizer)
    labels = instruction_labels(prompt, ids, tokenizer) if with_labels else None
    return PromptInputs(ids, description_ids(question, tokenizer), ans, labels)


@dataclass
class SplicedBatch:
    """The LLM input after placeholder substitution, right-padded to the batch maximum."""

    inputs_embeds: torch.Tensor  # [B, L, D]
    attention_mask: torch.Tensor  # [B, L] bool, first L_i positions valid
    refer_mask: torch.Tensor  # [B, L] bool, True on the description (+[SEG]) rows
    labels: torch.Tensor | None  # [B, L] long, IGNORE_INDEX where not supervised
    lengths: list[int]


def splice_sequence(
    ids: torch.Tensor,
    labels: torch.Tensor | None,
    image_tokens: torch.Tensor,
    refer: torch.Tensor | None,
    answer: torch.Tensor | None,
    embed: Callable[[torch.Tensor], torch.Tensor],
    require_description: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One sample: ids [L0] with placeholders -> (embeds [L, D], refer flags [L], labels [L]).

    ``require_description=False`` allows a prompt prefix that stops before <refer> (prefix caching).
    """
    embeds, flags, out_labels = [], [], []
    dev = ids.device

    def add(e: torch.Tensor, flag: bool, lab: torch.Tensor) -> None:
        embeds.append(e)
        flags.append(torch.full((e.shape[0],), flag, dtype=torch.bool, device=dev))
        out_labels.append(lab)

    ignore = lambda n: torch.full((n,), IGNORE_INDEX, dtype=torch.long, device=dev)  # noqa: E731
    special = torch.nonzero(ids < 0).flatten().tolist()
    start = 0
    for pos in special + [len(ids)]:
        if pos > start:  # a run of ordinary text ids
            add(embed(ids[start:pos]), False, labels[start:pos] if labels is not None else ignore(pos - start))
        start = pos + 1
        if pos == len(ids):
            break
        token = int(ids[pos])
        if token == IMAGE_TOKEN:
            add(image_tokens, False, ignore(image_tokens.shape[0]))
        elif token == REFER_TOKEN:
            if refer is None:
                raise ValueError("the prompt has a <refer> placeholder but no description ids were given")
            add(embed(refer), True, ignore(refer.shape[0]))
        elif token == ANSWER_TOKEN:
            if answer is None:
                raise ValueError("the prompt has an <answer> placeholder but no answer ids were given")
            add(embed(answer), False, answer.to(torch.long))
        elif token != SEG_TOKEN:
            raise ValueError(f"unknown placeholder id {token} in input_ids")
    if require_description and not any(f.any() for f in flags):
        raise ValueError("the prompt has no <refer> placeholder: there is no description to segment")
    return torch.cat(embeds), torch.cat(flags), torch.cat(out_labels) if labels is not None else None


def splice_batch(
    input_ids: torch.Tensor,
    image_tokens: torch.Tensor,
    refer_ids: Sequence[torch.Tensor],
    embed: Callable[[torch.Tensor], torch.Tensor],
    attention_mask: torch.Tensor | None = None,
    answer_ids: Sequence[torch.Tensor | None] | None = None,
    labels: torch.Tensor | None = None,
) -> SplicedBatch:
    """Splice a batch: input_ids [B, L0] (right-padded; ``attention_mask`` marks real ids),
    image_tokens [B, N, D], one description tensor per sample -> :class:`SplicedBatch`."""
    b = input_ids.shape[0]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
    seqs, flags, labs = [], [], []
    for i in range(b):
        valid = attention_mask[i].bool()
        e, f, lab = splice_sequence(
            input_ids[i][valid],
            labels[i][valid] if labels is not None else None,
            image_tokens[i],
            refer_ids[i],
            answer_ids[i] if answer_ids is not None else None,
            embed,
        )
        seqs.append(e)
        flags.append(f)
        labs.append(lab)
    lengths = [s.shape[0] for s in seqs]
    longest = max(lengths)
    pad = lambda t, v: F.pad(t, (0, longest - t.shape[0]), value=v)  # noqa: E731
    embeds = torch.stack([F.pad(s, (0, 0, 0, longest - s.shape[0])) for s in seqs])
    positions = torch.arange(longest, device=input_ids.device)
    mask = positions[None] < torch.tensor(lengths, device=input_ids.device)[:, None]
    refer_mask = torch.stack([pad(f, False) for f in flags])
    out_labels = torch.stack([pad(lab, IGNORE_INDEX) for lab in labs]) if labels is not None else None
    return SplicedBatch(embeds, mask, refer_mask, out_labels, lengths)

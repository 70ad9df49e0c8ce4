"""EarthReason: geospatial reasoning segmentation (spec §5.1)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np

from segearth.data.io import read_gray, require_dir
from segearth.data.sample import NO_TARGET_ANSWER, Sample, SampleKind, SampleList
from segearth.errors import ConfigError, InputError

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LABEL_SUFFIXES = (".png",)
QA_SUFFIXES = (".json", ".txt")


def _load_label(path: Path) -> np.ndarray:
    """Label PNG → ``uint8 [H, W]``; every non-zero pixel is target (official rule)."""
    return (read_gray(path) != 0).astype(np.uint8)


def _index_by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """``{stem: path}`` of the files in ``folder`` whose suffix (case-insensitive) is in ``suffixes``."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in suffixes:
            continue
        if path.stem in found:
            raise InputError(f"{folder}: two files share the name {path.stem!r}: {found[path.stem].name}, {path.name}")
        found[path.stem] = path
    return found


def _missing(stems: set[str], where: str) -> str:
    names = ", ".join(sorted(stems)[:5]) + (" …" if len(stems) > 5 else "")
    return f"{len(stems)} without a matching file in {where}: {names}"


class EarthReason(SampleList):
    """EarthReason reasoning-segmentation split.

    On-disk layout (official release)::

        <root>/rs_reason_seg/RSReasonSeg/<split>/
            images/<stem>.{jpg,jpeg,png}    RGB image (suffix case-insensitive)
            labels/<stem>.png               mask, every non-zero pixel is target
            QAs/<stem>.{json,txt}           JSON: {"questions": [str, ...], "answer": [str, ...], ...}

    ``root`` may be the data root, ``RSReasonSeg/`` or the split folder itself. The three folders
    are paired by file stem (the official loader pairs sorted listings by position, which silently
    mismatches if a file is missing; here any stem not present in all three folders is an error).

    One sample per question by default; ``first_question_only=True`` gives the official behaviour
    (``questions[0]`` only). Every question of an image gets ``answer[0]``, or
    ``"There is no target object in the image."`` when the answer list is empty; such samples have
    kind ``"absent"`` (their label is empty), the others ``"reasoning"``.
    """

    def __init__(self, root: str | Path, split: str = "val", *, first_question_only: bool = False) -> None:
        if split not in SPLITS:
            raise ConfigError(f"EarthReason split must be one of {SPLITS}, got {split!r}")
        self.split = split
        self.split_dir = self._find_split_dir(Path(root), split)
        self.samples: list[Sample] = self._build(first_question_only)

    @staticmethod
    def _find_split_dir(root: Path, split: str) -> Path:
        for candidate in (
            root / "rs_reason_seg" / "RSReasonSeg" / split,
            root / "RSReasonSeg" / split,
            root / split,
            root,
        ):
            if (candidate / "images").is_dir():
                return candidate
        raise FileNotFoundError(
            f"EarthReason: no {split!r} split under {root}; expected "
            f"{root / 'rs_reason_seg' / 'RSReasonSeg' / split}/{{images,labels,QAs}}"
        )

    def _build(self, first_question_only: bool) -> list[Sample]:
        images = _index_by_stem(require_dir(self.split_dir / "images", "EarthReason images"), IMAGE_SUFFIXES)
        labels = _index_by_stem(require_dir(self.split_dir / "labels", "EarthReason labels"), LABEL_SUFFIXES)
        qas = _index_by_stem(require_dir(self.split_dir / "QAs", "EarthReason QAs"), QA_SUFFIXES)
        if not images:
            raise FileNotFoundError(f"EarthReason: no {'/'.join(IMAGE_SUFFIXES)} images in {self.split_dir / 'images'}")
        problems = []
        for name, table in (("images", images), ("labels", labels), ("QAs", qas)):
            extra = table.keys() - (images.keys() & labels.keys() & qas.keys())
            if extra:
                others = [n for n in ("images", "labels", "QAs") if n != name]
                problems.append(f"{name}/: {_missing(set(extra), ' or '.join(others) + '/')}")
        if problems:
            raise InputError(f"EarthReason {self.split_dir}: files do not pair by name; " + "; ".join(problems))

        samples: list[Sample] = []
        for stem in sorted(images):
            questions, answer = self._read_qa(qas[stem])
            kind: SampleKind = "reasoning" if answer is not None else "absent"
            loader = partial(_load_label, labels[stem])
            for qi, question in enumerate(questions[:1] if first_question_only else questions):
                samples.append(
                    Sample(
                        id=f"{self.split}/{stem}#{qi}",
                        image_path=images[stem],
                        question=question,
                        kind=kind,
                        answer=answer or NO_TARGET_ANSWER,
                        mask_loader=loader,
                    )
                )
        return samples

    @staticmethod
    def _read_qa(path: Path) -> tuple[list[str], str | None]:
        """``(questions, answer[0] or None)`` from one QA file (JSON even when named ``.txt``)."""
        try:
            qa = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise InputError(f"{path}: not valid JSON ({err})") from err
        questions = qa.get("questions") if isinstance(qa, dict) else None
        if not isinstance(questions, list) or not questions or not all(isinstance(q, str) for q in questions):
            raise InputError(f"{path}: expected a non-empty list of strings under 'questions'")
        answers = qa.get("answer", [])
        if not isinstance(answers, list):
            raise InputError(f"{path}: 'answer' must be a list of strings, got {type(answers).__name__}")
        return questions, (answers[0] if answers else None)

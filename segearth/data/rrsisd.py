"""RRSIS-D: referring remote-sensing image segmentation (spec §5.2)."""

from __future__ import annotations

import json
import pickle
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from segearth.data.io import require_dir, require_file
from segearth.data.sample import Sample, SampleList
from segearth.errors import ConfigError, InputError

SPLITS = ("train", "val", "test")


class _PlainDataUnpickler(pickle.Unpickler):
    """Refuses to import anything: ``refs(unc).p`` holds only lists, dicts, strings and numbers,
    and a pickle that wants more could run arbitrary code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refs pickle references {module}.{name}; only plain data is allowed")


def _load_refs(path: Path) -> list[dict[str, Any]]:
    with path.open("rb") as fh:
        refs = _PlainDataUnpickler(fh).load()
    if not isinstance(refs, list):
        raise InputError(f"{path}: expected a pickled list of refs, got {type(refs).__name__}")
    return refs


def decode_segmentation(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """COCO ``segmentation`` (polygons, uncompressed or compressed RLE) → ``uint8 [H, W]`` in {0, 1}.

    Uses pycocotools, the rasteriser the official loader uses, so boundary pixels agree with it.
    Multiple parts are united (the official loader sums them, producing 2 where parts overlap).
    """
    try:
        from pycocotools import mask as coco_mask
    except ImportError as err:  # pragma: no cover - exercised only without the dependency
        raise ImportError("RRSIS-D masks need pycocotools: pip install pycocotools") from err
    if isinstance(segmentation, list):  # polygons: [[x0, y0, x1, y1, ...], ...]
        rles = coco_mask.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        if isinstance(segmentation["counts"], list):  # uncompressed RLE
            rles = [coco_mask.frPyObjects(segmentation, height, width)]
        else:
            counts = segmentation["counts"]
            rles = [{"size": segmentation["size"], "counts": counts.encode() if isinstance(counts, str) else counts}]
    else:
        raise InputError(f"unsupported COCO segmentation of type {type(segmentation).__name__}")
    with warnings.catch_warnings():
        # pycocotools < 2.1 trips numpy 2's __array__(copy=...) deprecation; harmless noise.
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded = coco_mask.decode(rles)  # [H, W, parts]
    if decoded.shape[:2] != (height, width):
        raise InputError(f"RLE of size {decoded.shape[:2]} does not match image size {(height, width)}")
    return decoded.any(axis=2).astype(np.uint8)


class RRSISD(SampleList):
    """RRSIS-D referring-segmentation split.

    On-disk layout (official release, refer-style API)::

        <root>/rs_ref_seg/RRSIS-D/
            rrsisd/refs(unc).p       pickle: list of {ref_id, ann_id, image_id, category_id, split,
                                     sentences: [{raw, sent, tokens, sent_id}, ...]}
            rrsisd/instances.json    COCO: images [{id, file_name, height, width}],
                                     annotations [{id, image_id, segmentation, ...}], categories
            images/rrsisd/JPEGImages/<file_name>

    ``root`` may be the data root or the ``RRSIS-D`` folder. Split ``"train"``/``"val"`` match
    ``ref["split"]`` exactly; ``"test"`` takes every split containing "test" (official rule).

    Differences from the official loader, all deliberate fixes: masks are decoded at the real image
    size from ``instances.json`` (official: hard-coded 800×800), multi-part masks are united
    rather than summed, and the image is found through the annotation's ``image_id`` (official:
    indexed by ref id). One sample per sentence by default; ``first_sentence_only=True`` keeps
    only ``sentences[0]`` (official). The question is the sentence's ``raw`` text.
    """

    def __init__(self, root: str | Path, split: str = "val", *, first_sentence_only: bool = False) -> None:
        if split not in SPLITS:
            raise ConfigError(f"RRSIS-D split must be one of {SPLITS}, got {split!r}")
        self.split = split
        base = self._find_base(Path(root))
        ann_dir = require_dir(base / "rrsisd", "RRSIS-D annotations")
        self.image_dir = require_dir(base / "images" / "rrsisd" / "JPEGImages", "RRSIS-D images")
        refs = _load_refs(require_file(ann_dir / "refs(unc).p", "RRSIS-D refs"))
        instances_path = require_file(ann_dir / "instances.json", "RRSIS-D instances")
        instances = json.loads(instances_path.read_text(encoding="utf-8"))
        try:
            self._images = {img["id"]: img for img in instances["images"]}
            self._anns = {ann["id"]: ann for ann in instances["annotations"]}
            categories = {cat["id"]: cat["name"] for cat in instances.get("categories", [])}
        except (KeyError, TypeError) as err:
            raise InputError(f"{instances_path}: not a COCO instances file ({err!r} missing)") from err
        self.samples: list[Sample] = [
            sample
            for ref in refs
            if self._in_split(ref.get("split", ""))
            for sample in self._samples_of(ref, categories, instances_path, first_sentence_only)
        ]

    @staticmethod
    def _find_base(root: Path) -> Path:
        for candidate in (root / "rs_ref_seg" / "RRSIS-D", root / "RRSIS-D", root):
            if (candidate / "rrsisd").is_dir():
                return candidate
        raise FileNotFoundError(
            f"RRSIS-D: no rrsisd/ annotation folder under {root} (expected {root}/rs_ref_seg/RRSIS-D/rrsisd)"
        )

    def _in_split(self, ref_split: str) -> bool:
        return "test" in ref_split if self.split == "test" else ref_split == self.split

    def _samples_of(
        self, ref: dict[str, Any], categories: dict[int, str], instances_path: Path, first_only: bool
    ) -> list[Sample]:
        ann = self._anns.get(ref["ann_id"])
        if ann is None:
            raise InputError(f"ref {ref['ref_id']}: annotation {ref['ann_id']} not in {instances_path}")
        image = self._images.get(ann["image_id"])
        if image is None:
            raise InputError(f"annotation {ann['id']}: image {ann['image_id']} not in {instances_path}")
        sentences = ref.get("sentences") or []
        if not sentences:
            raise InputError(f"ref {ref['ref_id']} has no sentences")
        image_path = require_file(self.image_dir / image["file_name"], f"RRSIS-D image of ref {ref['ref_id']}")
        loader = partial(decode_segmentation, ann["segmentation"], int(image["height"]), int(image["width"]))
        return [
            Sample(
                id=f"{ref['ref_id']}#{sentence.get('sent_id', si)}",
                image_path=image_path,
                question=sentence["raw"],
                kind="referring",
                answer=None,
                mask_loader=loader,
                class_name=categories.get(ref.get("category_id", ann.get("category_id"))),
            )
            for si, sentence in enumerate(sentences[:1] if first_only else sentences)
        ]

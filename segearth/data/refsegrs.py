"""RefSegRS: referring segmentation of remote-sensing imagery (spec §5.3)."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import numpy as np

from segearth.data.io import read_gray, require_dir, require_file
from segearth.data.sample import Sample, SampleList
from segearth.errors import ConfigError

SPLITS = ("train", "val", "test")
_LINE = re.compile(r"^(\d+)\s+(.*)")


def _load_mask(path: Path) -> np.ndarray:
    """Mask TIFF → ``uint8 [H, W]``: 255 is target, every other value background.

    The official loader maps only 255 to 1 and leaves other values as they are; its metric then
    counts only value 1 as foreground, so a stray 1 in a mask file would count there but not here.
    The released masks are 0/255, where both agree.
    """
    return (read_gray(path) == 255).astype(np.uint8)


class RefSegRS(SampleList):
    """RefSegRS referring-segmentation split.

    On-disk layout (official release)::

        <root>/rs_ref_seg/RefSegRS/
            output_phrase_{train,val,test}.txt   one sample per line: "<image id> <phrase>"
            images/<id>.tif                      RGB image
            masks/<id>.tif                       mask, 255 = target

    ``root`` may be the data root or the ``RefSegRS`` folder. Lines of the phrase file that do
    not start with an integer id followed by whitespace are skipped (official rule), so headers
    or blank lines are harmless.
    """

    def __init__(self, root: str | Path, split: str = "val") -> None:
        if split not in SPLITS:
            raise ConfigError(f"RefSegRS split must be one of {SPLITS}, got {split!r}")
        self.split = split
        base = self._find_base(Path(root), split)
        image_dir = require_dir(base / "images", "RefSegRS images")
        mask_dir = require_dir(base / "masks", "RefSegRS masks")
        phrases = base / f"output_phrase_{split}.txt"
        self.samples: list[Sample] = []
        for line_no, line in enumerate(phrases.read_text(encoding="utf-8").splitlines(), start=1):
            match = _LINE.match(line.strip())
            if match is None:
                continue
            image_id, phrase = match.groups()
            image = require_file(image_dir / f"{image_id}.tif", f"{phrases.name} line {line_no}")
            mask = require_file(mask_dir / f"{image_id}.tif", f"{phrases.name} line {line_no}")
            self.samples.append(
                Sample(
                    id=f"{split}/{image_id}@L{line_no}",
                    image_path=image,
                    question=phrase,
                    kind="referring",
                    answer=None,
                    mask_loader=partial(_load_mask, mask),
                )
            )

    @staticmethod
    def _find_base(root: Path, split: str) -> Path:
        name = f"output_phrase_{split}.txt"
        for candidate in (root / "rs_ref_seg" / "RefSegRS", root / "RefSegRS", root):
            if (candidate / name).is_file():
                return candidate
        raise FileNotFoundError(f"RefSegRS: {name} not found under {root} (expected {root}/rs_ref_seg/RefSegRS/{name})")

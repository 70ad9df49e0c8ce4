"""What ``segearth eval`` produces: :class:`EvalResult` and its report files.

:func:`segearth.evaluate.evaluate` fills an :class:`EvalResult` (per-sample records, scores of the
model and of each baseline, the best/worst cases as thumbnails); this module summarises it and writes
the JSON summary, the markdown tables, the per-sample CSV and the PNG of cases.
"""

from __future__ import annotations

import csv
import heapq
import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from .data.sample import Sample
    from .metrics import SampleScore

REPORT_FILES = ("report.json", "report.md", "samples.csv", "cases.png")
THUMB = 224
_TRUTH_RGB, _PRED_RGB = (0, 230, 90), (255, 40, 200)


def check_outputs(out: Path, overwrite: bool) -> list[Path]:
    """The report paths in ``out``; refuses (``FileExistsError``) to replace any without ``overwrite``.

    Called before the evaluation starts so a long run never ends in a refusal.
    """
    paths = [out / name for name in REPORT_FILES]
    existing = [p.name for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds {', '.join(existing)}; pass --overwrite to replace them")
    return paths


# --------------------------------------------------------------------------- results


#: Report breakdowns: summary key -> the :class:`SampleRecord` field it groups by.
BREAKDOWNS = {"by_kind": "kind", "by_class": "class_name", "by_source": "source", "by_phrasing": "phrasing"}
BREAKDOWN_TITLES = {"by_kind": "question kind", "by_class": "class", "by_source": "source",
                    "by_phrasing": "phrasing (seen in training / held out)"}


@dataclass(frozen=True)
class SampleRecord:
    """One row of ``samples.csv``: the model's scores and each baseline's IoU."""

    id: str
    image: str
    question: str
    kind: str
    class_name: str | None
    iou: float
    intersection: int
    union: int
    target_pixels: int
    predicted_pixels: int
    baseline_iou: dict[str, float]
    source: str | None = None
    phrasing: str | None = None
    max_probability: float | None = None  # the answer's "is it here?" score (predictor.Scores)


@dataclass
class EvalResult:
    """Per-sample records and scores of the model and every baseline, for the report writers."""

    protocol: str
    canvas_size: int
    records: list[SampleRecord]
    scores: dict[str, list[SampleScore]]  # method key → one score per record
    method_names: dict[str, str]
    method_descriptions: dict[str, str]
    cases: CaseCollector
    n_images: int
    wall_s: float
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, dict[str, Any]]:
        """``{method: {"overall": metrics, "by_kind": {kind: metrics}, "by_class": …, "by_source": …,
        "by_phrasing": …}}`` (a breakdown is empty when no sample carries that field)."""
        from .metrics import summarize  # imports torch; see segearth.evaluate

        out: dict[str, dict[str, Any]] = {}
        for key, scores in self.scores.items():
            groups: dict[str, dict[str, list[SampleScore]]] = {g: {} for g in BREAKDOWNS}
            for record, score in zip(self.records, scores, strict=True):
                for group, field_name in BREAKDOWNS.items():
                    label = getattr(record, field_name)
                    if label:
                        groups[group].setdefault(label, []).append(score)
            out[key] = {"overall": summarize(scores)}
            for group, by_label in groups.items():
                ordered = by_label.items() if group == "by_kind" else sorted(by_label.items())
                out[key][group] = {k: summarize(v) for k, v in ordered}
        return out


# --------------------------------------------------------------------------- best / worst cases


@dataclass
class Case:
    """One sample drawn in the PNG: thumbnails on the scored grid, plus its caption fields."""

    iou: float
    sample_id: str
    question: str
    kind: str
    class_name: str | None
    image: np.ndarray  # uint8 [h, w, 3]
    truth: np.ndarray  # bool [h, w]
    pred: np.ndarray  # bool [h, w]


def _thumb(array: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    h, w = array.shape[:2]
    scale = size / max(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = Image.fromarray(array.astype(np.uint8) * (255 if array.dtype == bool else 1))
    out = np.asarray(img.resize(new, Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR))
    return out > 127 if array.dtype == bool else out


class CaseCollector:
    """Keeps the ``k`` best and ``k`` worst samples by model IoU, as thumbnails only (memory stays flat).

    Ties are broken to be informative: among equal IoUs the best list prefers large targets (so
    correctly-empty answers on absent questions do not crowd out real hits) and the worst list
    prefers large unions (the costliest misses).
    """

    def __init__(self, k: int = 4, size: int = THUMB) -> None:
        self.k, self.size = k, size
        self._best: list[tuple[tuple, Case]] = []
        self._worst: list[tuple[tuple, Case]] = []
        self._seen = 0

    def _wants(self, heap: list, key: tuple) -> bool:
        return self.k > 0 and (len(heap) < self.k or key > heap[0][0])

    def offer(self, sample: Sample, iou: float, union: int,
              image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> None:
        """Consider one scored sample; ``image``/``truth``/``pred`` are on the grid it was scored on."""
        self._seen += 1
        target = int(np.count_nonzero(truth))
        best_key, worst_key = (iou, target, -self._seen), (-iou, union, -self._seen)
        wants_best, wants_worst = self._wants(self._best, best_key), self._wants(self._worst, worst_key)
        if not (wants_best or wants_worst):
            return
        case = Case(iou, sample.id, sample.question, sample.kind, sample.class_name, _thumb(image, self.size, False),
                    _thumb(truth, self.size, True), _thumb(pred, self.size, True))
        for wanted, heap, key in ((wants_best, self._best, best_key), (wants_worst, self._worst, worst_key)):
            if wanted:
                (heapq.heappush if len(heap) < self.k else heapq.heapreplace)(heap, (key, case))

    def best(self) -> list[Case]:
        return [case for _, case in sorted(self._best, key=lambda kc: kc[0], reverse=True)]

    def worst(self) -> list[Case]:
        return [case for _, case in sorted(self._worst, key=lambda kc: kc[0], reverse=True)]


def _overlay(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> Image.Image:
    # Dim the image so the mask colour reads on any scene.
    out = image.astype(np.float32) * 0.55
    out[mask] = out[mask] * 0.3 + np.array(colour, np.float32) * 0.7
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError):  # Pillow without FreeType has a single bitmap size
        return ImageFont.load_default()


def draw_cases(best: list[Case], worst: list[Case], size: int = THUMB) -> Image.Image:
    """A grid, one row per case: image | truth (green) | prediction (magenta), caption underneath."""
    font, pad, line = _font(13), 6, 16
    rows = [("best", c) for c in best] + [("worst", c) for c in worst]
    width = 3 * size + 4 * pad
    wrap = max(20, width // 7)
    captions = []
    for label, c in rows:
        head = " · ".join(x for x in (label, f"IoU {c.iou:.3f}", c.kind, c.class_name, c.sample_id) if x)
        captions.append([head, *textwrap.wrap(c.question, wrap)[:3]])
    height = pad + sum(size + pad + line * len(cap) + pad for cap in captions) if rows else 2 * line
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if not rows:
        draw.text((pad, pad), "no samples", fill=(0, 0, 0), font=font)
    y = pad
    for (label, c), cap in zip(rows, captions, strict=True):
        panels = (Image.fromarray(c.image), _overlay(c.image, c.truth, _TRUTH_RGB),
                  _overlay(c.image, c.pred, _PRED_RGB))
        for i, panel in enumerate(panels):
            sheet.paste(panel, (pad + i * (size + pad), y))
        y += size + pad
        head_colour = (0, 90, 0) if label == "best" else (170, 0, 0)
        for j, text in enumerate(cap):
            draw.text((pad, y + j * line), text, fill=(0, 0, 0) if j else head_colour, font=font)
        y += line * len(cap) + pad
    return sheet


# --------------------------------------------------------------------------- tables and files


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def markdown(result: EvalResult, meta: dict[str, Any]) -> str:
    """The human report: overall table, then per-kind and per-class gIoU / cIoU, then method notes."""
    summary = result.summary()
    names = result.method_names
    metric_keys = [k for k in summary["model"]["overall"] if k != "n"]  # gIoU, cIoU, Pr@0.5 … Pr@0.9
    size = result.canvas_size
    grid = f"{size}×{size} letterboxed canvas" if result.protocol == "paper" else "each image at its own size"
    lines = [
        f"# segearth eval: {meta['dataset']} / {meta['split']}",
        "",
        (f"Model `{meta['model']}`, protocol `{result.protocol}` ({grid}), {len(result.records)} samples on "
         f"{result.n_images} images, wall time {result.wall_s:.1f} s. Values in %."),
        "",
        "| method | n | " + " | ".join(metric_keys) + " |",
        "|---|---:|" + "---:|" * len(metric_keys),
    ]
    for key, scores in summary.items():
        row = scores["overall"]
        lines.append(f"| {names[key]} | {int(row['n'])} | " + " | ".join(_pct(row[m]) for m in metric_keys) + " |")
    for group, title in BREAKDOWN_TITLES.items():
        labels = list(summary["model"][group])
        if not labels:
            continue
        lines += ["", f"## By {title} (gIoU / cIoU)", "",
                  f"| {title} | n | " + " | ".join(names[k] for k in summary) + " |",
                  "|---|---:|" + "---:|" * len(summary)]
        for label in labels:
            n = int(summary["model"][group][label]["n"])
            cells = [f"{_pct(s[group][label]['gIoU'])} / {_pct(s[group][label]['cIoU'])}" for s in summary.values()]
            lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    lines += _presence_lines(result.records, meta.get("presence_threshold"))
    lines += ["", "## Methods", ""]
    lines += [f"- **{names[key]}**: {text}" for key, text in result.method_descriptions.items()]
    if result.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in result.notes]
    return "\n".join(lines) + "\n"


#: Thresholds on ``max_probability`` tabulated for "is it here?" (0.5: the mask itself is empty or not).
PRESENCE_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def gated_giou(records: list[SampleRecord], threshold: float) -> float:
    """gIoU had every answer below ``threshold`` been "not here" (an empty mask: IoU 1 on an empty target,
    0 on any other). Exact for thresholds at or above the one the answers were scored with."""
    ious = [r.iou if r.max_probability >= threshold else float(r.target_pixels == 0)
            for r in records if r.max_probability is not None]
    return sum(ious) / len(ious)


def best_presence_threshold(records: list[SampleRecord], lowest: float = 0.5) -> float:
    """The threshold (0.01 steps from ``lowest``) with the highest :func:`gated_giou`: how a model's
    ``presence_threshold`` is calibrated, on its training split (the lowest of ties)."""
    candidates = [round(lowest + i / 100, 2) for i in range(int(round((1 - lowest) * 100)))]
    return max(candidates, key=lambda t: (gated_giou(records, t), -t))


def _presence_lines(records: list[SampleRecord], scored_with: float | None) -> list[str]:
    """Where absent-class questions exist: how a threshold on ``max_probability`` separates them from
    the rest (the trade a user makes when thresholding the score), and the gIoU each threshold gives."""
    scored = [(r.kind, r.max_probability) for r in records if r.max_probability is not None]
    absent = [p for kind, p in scored if kind == "absent"]
    present = [p for kind, p in scored if kind != "absent"]
    if not absent or not present:
        return []
    lowest = max(0.5, scored_with or 0.0)  # below the threshold the answers were scored with, IoUs are lost
    lines = ["", "## Is it here? (answer \"not here\" when max_probability < threshold)", "",
             f"| threshold | absent questions answered \"not here\" (of {len(absent)}) | "
             f"other questions answered \"not here\" (of {len(present)}) | gIoU |", "|---:|---:|---:|---:|"]
    for t in PRESENCE_THRESHOLDS:
        if t >= lowest:
            lines.append(f"| {t:.1f} | {_pct(_share_below(absent, t))} | {_pct(_share_below(present, t))} | "
                         f"{_pct(gated_giou(records, t))} |")
    best = best_presence_threshold(records, lowest)
    lines += ["", f"Highest gIoU at threshold {best:.2f} ({_pct(gated_giou(records, best))}); a model's "
              "`presence_threshold` (config.json) is this value on its training split, scored with "
              "`--presence-threshold 0`."]
    return lines


def _share_below(values: list[float], threshold: float) -> float:
    return sum(v < threshold for v in values) / len(values)


def _csv_rows(result: EvalResult) -> tuple[list[str], list[list[Any]]]:
    baselines = [k for k in result.method_names if k != "model"]
    header = ["id", "image", "question", "kind", "class", "source", "phrasing", "iou", "intersection", "union",
              "target_pixels", "predicted_pixels", "max_probability", *(f"iou_{k}" for k in baselines)]
    rows = [
        [r.id, r.image, r.question, r.kind, r.class_name or "", r.source or "", r.phrasing or "", f"{r.iou:.6f}",
         r.intersection, r.union, r.target_pixels, r.predicted_pixels,
         "" if r.max_probability is None else f"{r.max_probability:.6f}",
         *(f"{r.baseline_iou[k]:.6f}" for k in baselines)]
        for r in result.records
    ]
    return header, rows


def write_reports(result: EvalResult, out: Path, meta: dict[str, Any], overwrite: bool = False) -> list[Path]:
    """Write ``report.json``, ``report.md``, ``samples.csv`` and ``cases.png`` into ``out``."""
    json_path, md_path, csv_path, png_path = check_outputs(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        **meta,
        "protocol": result.protocol,
        "canvas_size": result.canvas_size if result.protocol == "paper" else None,
        "n_samples": len(result.records),
        "n_images": result.n_images,
        "wall_s": round(result.wall_s, 3),
        "methods": {k: {"name": result.method_names[k], "description": d}
                    for k, d in result.method_descriptions.items()},
        "metrics": result.summary(),
        "notes": result.notes,
    }
    json_path.write_text(json.dumps(payload, indent=2, allow_nan=False, default=str) + "\n", encoding="utf-8")
    md_path.write_text(markdown(result, meta), encoding="utf-8")
    header, rows = _csv_rows(result)
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    draw_cases(result.cases.best(), result.cases.worst(), result.cases.size).save(png_path)
    return [json_path, md_path, csv_path, png_path]


def print_summary(result: EvalResult, console: Console) -> None:
    """The overall table on the terminal (the full breakdown is in report.md)."""
    shown = ("gIoU", "cIoU", "Pr@0.5", "Pr@0.7", "Pr@0.9")
    table = Table(title=f"{len(result.records)} samples, {result.n_images} images, {result.wall_s:.1f} s (values in %)")
    for col in ("method", *shown):
        table.add_column(col, justify="left" if col == "method" else "right")
    for key, row in result.summary().items():
        table.add_row(result.method_names[key], *(_pct(row["overall"][m]) for m in shown))
    console.print(table)

"""``segearth eval``: score a model on a benchmark with the official metrics, next to baselines.

Protocols (spec §6, :mod:`segearth.metrics`):

* ``paper``: the mask logits are bilinearly up-sampled (``align_corners=False``) to the model's
  ``S × S`` letterboxed input canvas and thresholded at ``> 0``; the target is letterboxed the same
  way (nearest resize, zero padding). ``S`` is the model's input size: 1024 for the released model,
  which is exactly the official protocol; tiny test models score on their own smaller canvas.
* ``native``: the logits are un-letterboxed to the image's own size, then ``> 0``, against the raw
  target; what a user of the masks experiences.

Baselines, scored on the same grid and targets so the model's numbers have a meaning:

* ``nothing``: the empty mask (IoU 1 on empty targets, 0 otherwise).
* ``everything``: every pixel of the image; on the paper canvas the letterboxed image area, not the
  padding (which is no image).
* ``everything_canvas`` (paper only): the whole canvas, padding included: what the official scoring
  makes of a model whose logits are positive everywhere.
* ``oracle_colour`` (datasets with classes): knows the sample's class, sees only pixel colours.
  A colour histogram (5 bits per channel) of the class's pixels and of all other pixels is
  counted over the train split; a pixel is predicted when the class posterior of its colour bin
  exceeds a per-class threshold chosen to maximise the train cIoU. Predicting the class mask
  itself would score 1 by construction on land cover (the target *is* the class mask); this
  bounds instead what class knowledge plus a per-pixel colour rule can reach.

Each image is read and encoded once (:meth:`Predictor.set_image`) and all its questions reuse
the cache; the next image's files are decoded in a background thread meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .data.registry import DATASETS, get_dataset
from .errors import ConfigError, InputError
from .report import CaseCollector, EvalResult, SampleRecord, check_outputs, print_summary, write_reports

# torch, rasterio and transformers are imported where they are used: the command line imports this
# module to register `segearth eval`, and `segearth --help` should not take seconds.
if TYPE_CHECKING:
    from .data import Sample
    from .metrics import SampleScore
    from .predictor import ImagePredictor

DEFAULT_OUT = Path("segearth-eval")
#: The registered dataset names as the choices of ``--dataset`` (shown in ``--help``, checked by typer).
# (mypy cannot see the members of an Enum built from a registry at import time.)
DatasetName = Enum("DatasetName", {name: name for name in DATASETS}, type=str)  # type: ignore[misc]
COLOUR_BITS = 5
#: The colour prior reads at most this many train images (evenly spaced), so that a large train
#: split (RRSIS-D: thousands of images) costs seconds, not the time of the evaluation itself.
MAX_PRIOR_IMAGES = 500

ToGrid = Callable[[np.ndarray], np.ndarray]


def load_samples(dataset: str, split: str, data_root: Path, first_question_only: bool = False) -> list[Sample]:
    """The samples of one split of a registered dataset (layout errors raise naming the missing file)."""
    spec = get_dataset(dataset)
    if first_question_only and spec.first_question_option is None:
        having = ", ".join(name for name, d in DATASETS.items() if d.first_question_option is not None)
        raise ConfigError(f"--first-question-only applies to {having}, not to {dataset}")
    return spec.samples(data_root, split, first_question_only)


def group_by_image(samples: Sequence[Sample]) -> list[list[Sample]]:
    """Samples grouped by image file, in first-seen order (each image is then encoded once)."""
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(sample.image_key, []).append(sample)
    return list(groups.values())


def _loader_key(loader: Callable[[], np.ndarray]) -> Any:
    # Land-cover samples of one class share equal partials; decoding the scene mask once saves
    # most of the I/O. Unhashable arguments (RRSIS-D polygons) fall back to object identity.
    if isinstance(loader, partial):
        key = (loader.func, loader.args, tuple(loader.keywords.items()))
        try:
            hash(key)
            return key
        except TypeError:
            pass
    return id(loader)


def load_group(group: Sequence[Sample]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The shared image and every sample's target (each distinct mask decoded once)."""
    cache: dict[Any, np.ndarray] = {}
    masks = []
    for sample in group:
        key = _loader_key(sample.mask_loader)
        if key not in cache:
            cache[key] = sample.load_mask()
        masks.append(cache[key])
    # A writable copy: decoders hand out read-only arrays, which torch.from_numpy warns about.
    return np.array(group[0].load_image()), masks


# --------------------------------------------------------------------------- baselines


def _colour_index(image: np.ndarray) -> np.ndarray:
    q = (image >> (8 - COLOUR_BITS)).astype(np.int32)
    return (q[..., 0] << (2 * COLOUR_BITS)) | (q[..., 1] << COLOUR_BITS) | q[..., 2]


@dataclass
class ColourPrior:
    """Per-class lookup ``colour bin → predicted`` fitted on a train split (see the module docstring)."""

    tables: dict[str, np.ndarray] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def fit(cls, samples: Sequence[Sample], on_image: Callable[[int, int], None] | None = None) -> ColourPrior:
        """Count colours of each class's pixels (union of its masks per image) against all other pixels.

        ``on_image(done, total)`` is called after each image read.
        """
        bins = 1 << (3 * COLOUR_BITS)
        pos: dict[str, np.ndarray] = {}
        neg: dict[str, np.ndarray] = {}
        groups = group_by_image([s for s in samples if s.class_name])
        step, total = max(1, len(groups) / MAX_PRIOR_IMAGES), min(len(groups), MAX_PRIOR_IMAGES)
        for done, group in enumerate((groups[int(i * step)] for i in range(total)), start=1):
            image, masks = load_group(group)
            index = _colour_index(image)
            union: dict[str, np.ndarray] = {}
            for sample, mask in zip(group, masks, strict=True):
                assert sample.class_name  # only samples with a class were grouped
                union[sample.class_name] = union.get(sample.class_name, np.zeros(mask.shape, bool)) | (mask == 1)
            everything = np.bincount(index.ravel(), minlength=bins)
            for name, m in union.items():
                hits = np.bincount(index[m], minlength=bins)
                pos[name] = pos.get(name, 0) + hits
                neg[name] = neg.get(name, 0) + everything - hits
            if on_image:
                on_image(done, total)
        prior, candidates = cls(), np.arange(0.05, 1.0, 0.05)
        for name, hits in pos.items():
            p, n = hits.astype(np.float64), neg[name].astype(np.float64)
            posterior = np.divide(p, p + n, out=np.zeros(bins), where=(p + n) > 0)
            # The threshold maximising the train cIoU, computed from the histograms alone.
            ciou = [p[posterior > t].sum() / (p.sum() + n[posterior > t].sum() + 1e-10) for t in candidates]
            best = candidates[int(np.argmax(ciou))]
            prior.tables[name], prior.thresholds[name] = posterior > best, float(round(best, 2))
        return prior

    def predict(self, image: np.ndarray, class_name: str | None) -> np.ndarray:
        """Bool ``[H, W]``: pixels whose colour the prior assigns to ``class_name`` (none if unseen)."""
        table = self.tables.get(class_name or "")
        return np.zeros(image.shape[:2], bool) if table is None else table[_colour_index(image)]


@dataclass(frozen=True)
class Baseline:
    """A model-free predictor: ``predict(native image, sample, to_grid)`` → bool mask on the scored grid."""

    key: str
    name: str
    description: str
    predict: Callable[[np.ndarray, Sample, ToGrid], np.ndarray]


def standard_baselines(protocol: str, size: int, prior: ColourPrior | None = None) -> list[Baseline]:
    """The baselines of the report for ``protocol`` on an ``size²`` canvas (see the module docstring)."""
    out = [
        Baseline("nothing", "predict nothing", "the empty mask.",
                 lambda img, s, to_grid: to_grid(np.zeros(img.shape[:2], bool))),
        Baseline("everything", "predict everything", "every pixel of the image"
                 + (" (the letterboxed image area, without the padding)." if protocol == "paper" else "."),
                 lambda img, s, to_grid: to_grid(np.ones(img.shape[:2], bool))),
    ]
    if protocol == "paper":
        out.append(Baseline("everything_canvas", "predict everything, whole canvas",
                            f"the whole {size}×{size} canvas, padding included: what the official scoring makes "
                            "of logits that are positive everywhere.",
                            lambda img, s, to_grid: np.ones((size, size), bool)))
    if prior is not None:
        thresholds = ", ".join(f"{k} {v:.2f}" for k, v in sorted(prior.thresholds.items()))
        out.append(Baseline("oracle_colour", "oracle class + colour prior",
                            "knows the sample's class and sees only pixel colours: predicts the pixels whose colour "
                            f"bin ({COLOUR_BITS} bits/channel) has a train-split class posterior above a per-class "
                            f"threshold chosen for the best train cIoU ({thresholds}). The class mask itself would "
                            "score 1 by construction; this bounds class knowledge plus a per-pixel colour rule.",
                            lambda img, s, to_grid: to_grid(prior.predict(img, s.class_name))))
    return out


# --------------------------------------------------------------------------- the harness


def evaluate(
    predictor: ImagePredictor,
    samples: Sequence[Sample],
    protocol: str = "paper",
    *,
    baselines: Sequence[Baseline] | None = None,
    cases: int = 4,
    on_sample: Callable[[Sample], None] | None = None,
) -> EvalResult:
    """Score ``predictor`` on ``samples`` under ``protocol`` (``"paper"`` or ``"native"``).

    Args:
        baselines: model-free predictors scored alongside; default :func:`standard_baselines`
            without the colour prior.
        cases: how many best and worst samples to keep for the PNG.
        on_sample: called after each sample (progress bars).
    """
    from .geo.letterbox import letterbox
    from .metrics import PROTOCOLS, UNKNOWN, letterbox_mask, score_sample

    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if not samples:
        raise InputError("no samples to evaluate")
    size = predictor.image_size
    baselines = list(standard_baselines(protocol, size) if baselines is None else baselines)
    scores: dict[str, list[SampleScore]] = {"model": [], **{b.key: [] for b in baselines}}
    records: list[SampleRecord] = []
    collector = CaseCollector(cases)
    groups = group_by_image(samples)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load_group, groups[0])
        for i, group in enumerate(groups):
            image, masks = pending.result()
            if i + 1 < len(groups):
                pending = pool.submit(load_group, groups[i + 1])
            predictor.set_image(image)
            to_grid: ToGrid = (lambda m: letterbox_mask(m, size)) if protocol == "paper" else (lambda m: m)
            shown = letterbox(image, size)[0] if protocol == "paper" else image
            for sample, mask in zip(group, masks, strict=True):
                pred = predictor.predict(sample.question)
                logits = pred.canvas_logits(size) if protocol == "paper" else pred.logits
                # "not here" below the presence threshold, as `segearth predict` answers
                binary = (logits > 0).cpu().numpy() & pred.scores.present(predictor.presence_threshold)
                grid_mask = to_grid(mask)
                truth = grid_mask == 1
                known = grid_mask != UNKNOWN  # partially labelled scenes: unknown pixels are not scored
                score = score_sample(binary & known, truth)
                scores["model"].append(score)
                baseline_iou = {}
                for b in baselines:
                    b_score = score_sample(b.predict(image, sample, to_grid) & known, truth)
                    scores[b.key].append(b_score)
                    baseline_iou[b.key] = b_score.iou
                records.append(SampleRecord(sample.id, str(sample.image_path), sample.question, sample.kind,
                                            sample.class_name, score.iou, score.intersection, score.union,
                                            int(truth.sum()), int((binary & known).sum()), baseline_iou,
                                            sample.source, sample.phrasing, pred.scores.max_probability))
                collector.offer(sample, score.iou, score.union, shown, truth, binary)
                if on_sample:
                    on_sample(sample)
    where = "up-sampled to the canvas" if protocol == "paper" else "un-letterboxed to the image size"
    return EvalResult(
        protocol, size, records, scores,
        method_names={"model": "model", **{b.key: b.name for b in baselines}},
        method_descriptions={"model": f"the model's mask: logits {where} (bilinear), > 0" + (
                                 "." if not predictor.presence_threshold else
                                 f"; empty when the answer's max probability is below {predictor.presence_threshold}"
                                 " (the presence threshold)."),
                             **{b.key: b.description for b in baselines}},
        cases=collector, n_images=len(groups), wall_s=time.perf_counter() - start,
    )


# --------------------------------------------------------------------------- the command


def fit_prior_for(dataset: str, split: str, data_root: Path, samples: Sequence[Sample],
                  on_image: Callable[[int, int], None] | None = None) -> tuple[ColourPrior | None, list[str]]:
    """The colour prior from ``dataset``'s train split when the samples have classes, plus report notes."""
    if not get_dataset(dataset).classes or not any(s.class_name for s in samples):
        return None, []
    try:
        train = load_samples(dataset, "train", data_root)
    except (FileNotFoundError, ValueError) as exc:
        return None, [f"oracle class + colour prior skipped: the train split could not be read ({exc})"]
    notes = [f"colour prior fitted on {min(len(group_by_image(train)), MAX_PRIOR_IMAGES)} train images"]
    if split in ("train", "all"):
        notes.append(f"the {split!r} split contains the train split, so the colour prior is scored in-sample")
    return ColourPrior.fit(train, on_image), notes


def run_eval(dataset: str, split: str, data_root: Path, model: Path | None, out: Path, *, protocol: str = "paper",
             first_question_only: bool = False, limit: int | None = None, task: str | None = None,
             device: str = "cpu", dtype: str = "float32", overwrite: bool = False,
             console: Console | None = None, presence_threshold: float | None = None) -> EvalResult:
    """Everything ``segearth eval`` does, raising user errors instead of exiting."""
    from .api import load_predictor
    from .metrics import PROTOCOLS

    console = console or Console()
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    check_outputs(out, overwrite)  # refuse before the long run, not after it
    samples = load_samples(dataset, split, data_root, first_question_only)[:limit]
    if not samples:
        raise InputError(f"{dataset} {split!r} under {data_root} has no samples")
    task = task or get_dataset(dataset).task
    predictor, model_name = load_predictor(model, task, device, dtype, presence_threshold=presence_threshold)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("colour prior (train split)", visible=False)
        prior, notes = fit_prior_for(
            dataset, split, data_root, samples,
            lambda done, total: progress.update(bar, completed=done, total=total, visible=True))
        bar = progress.add_task(f"{dataset}/{split}", total=len(samples))
        baselines = standard_baselines(protocol, predictor.image_size, prior)
        result = evaluate(predictor, samples, protocol, baselines=baselines,
                          on_sample=lambda s: progress.update(bar, advance=1, description=s.image_path.name))
    result.notes += notes
    if protocol == "paper" and predictor.image_size != 1024:
        result.notes.append(f"the canvas is this model's input size {predictor.image_size}, not the paper's 1024")
    meta = {"dataset": dataset, "split": split, "data_root": str(data_root), "model": model_name, "task": task,
            "device": device, "dtype": dtype, "first_question_only": first_question_only, "limit": limit,
            "presence_threshold": predictor.presence_threshold}
    paths = write_reports(result, out, meta, overwrite)
    print_summary(result, console)
    console.print("wrote " + ", ".join(str(p) for p in paths), highlight=False, soft_wrap=True)
    return result


def eval_command(
    dataset: Annotated[DatasetName, typer.Option("--dataset", "-d", help="Benchmark (segearth.data.registry).")],
    data_root: Annotated[Path, typer.Option(
        "--data-root", help="Folder holding the dataset in its official layout (the one with rs_reason_seg/ or "
        "rs_ref_seg/; for landcover, the one with dubai/ and massachusetts_roads/).")],
    split: Annotated[str, typer.Option(
        help="; ".join(f"{', '.join(d.splits)} ({name})" for name, d in DATASETS.items()) + ".")] = "val",
    model: Annotated[Path | None, typer.Option(
        "--model", "-m",
        help="Checkpoint folder (config.json, *.safetensors, tokenizer); default: the built-in segearth-nano.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder (created if needed).")] = DEFAULT_OUT,
    protocol: Annotated[str, typer.Option(
        help="paper: official scoring on the model's letterboxed canvas (1024² for the released model); "
        "native: at each image's own size.")] = "paper",
    first_question_only: Annotated[bool, typer.Option(
        help="Official sample set: only the first question (earthreason) or sentence (rrsisd).")] = False,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N samples (quick looks).")] = None,
    task: Annotated[str | None, typer.Option(
        help="Prompt template, reasoning or referring (default: the dataset's: "
        + ", ".join(f"{d.task} for {name}" for name, d in DATASETS.items()) + ").")] = None,
    device: Annotated[str, typer.Option(help="Torch device (cpu, cuda, mps).")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32 (official evaluation), bfloat16 or float16.")] = "float32",
    presence_threshold: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="An answer whose max probability is below this is scored as an empty mask, as "
        "`segearth predict` answers \"not here\". Default: the model's own; 0: off (the official rule).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace report files already in --out.")] = False,
    debug: Annotated[bool, typer.Option(help="Show full tracebacks.")] = False,
) -> None:
    """Score a model on a benchmark with the official metrics, next to baselines that give them meaning.

    Metrics (spec §6): gIoU = mean per-sample IoU (empty prediction on an empty target = 1),
    cIoU = total intersection / total union, Pr@t = share of samples with IoU > t. Reported overall,
    per question kind (referring / reasoning / absent), and per class, source and phrasing (seen in
    training or held out) where the samples carry them. Pixels labelled unknown (255, partially
    labelled scenes) are not scored.

    --protocol paper reproduces the paper: logits up-sampled to the model's letterboxed canvas and
    thresholded at 0, ground truth letterboxed the same way (padding counts). --protocol native
    scores each mask at the image's own resolution. Either way an answer below the model's presence
    threshold (--presence-threshold) is an empty mask, as `segearth predict` gives it.

    Baselines in the same report: predict nothing, predict the whole image (and, for paper, the
    whole canvas with its padding), and an oracle that knows the class but sees only pixel colours.

    Writes into --out: report.json (all numbers), report.md (tables; with absent-class questions, how
    thresholds on max_probability tell them from the rest), samples.csv (one row per sample: id,
    question, kind, class, source, phrasing, IoU, I, U, max_probability, baselines) and cases.png
    (best and worst cases: image, truth in green, prediction in magenta, question).

    Examples:
      segearth eval -d earthreason --data-root data/ --split test -m SegEarth-R1-EarthReason/
      segearth eval -d rrsisd --data-root data/ --split test --first-question-only -m ckpt/
      segearth eval -d landcover --data-root ../shared/data --split val -m ckpt/ --protocol native
      segearth eval -d multisource --data-root ../shared/data --split val   (cross-domain, built-in model)
    """
    from .errors import USER_ERRORS, exit_with_user_error

    try:
        run_eval(dataset.value, split, data_root, model, out, protocol=protocol,
                 first_question_only=first_question_only, limit=limit, task=task, device=device, dtype=dtype,
                 overwrite=overwrite, presence_threshold=presence_threshold)
    except USER_ERRORS as exc:
        exit_with_user_error(exc, debug)

"""``segearth predict``: resolve the inputs (file, folder, glob, CSV manifest), load the model once,
run every job with a progress bar, and report per-item failures without stopping the batch."""

from __future__ import annotations

import csv
import glob
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .geo.read import open_raster
from .predict import PredictOptions, predict_raster, work_units
from .predictor import Predictor
from .weights import resolve_model

RASTER_SUFFIXES = {".tif", ".tiff", ".jpg", ".jpeg", ".png", ".jp2", ".img", ".vrt"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Job:
    image: Path
    questions: list[str]
    stems: list[str] | None = None  # output names from a manifest


@dataclass
class BatchReport:
    done: list[tuple[Job, object]] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    if text is None or text == "":
        return None
    try:
        bands = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise ValueError(f"--bands must be comma-separated 1-based band numbers like 4,3,2, got {text!r}") from None
    if any(b < 1 for b in bands):
        raise ValueError(f"--bands are 1-based: got {text!r}")
    return bands


def read_manifest(path: Path) -> list[Job]:
    """CSV with a header ``image,question[,output]``; relative image paths are relative to the CSV."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"image", "question"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: a manifest needs a header with columns image,question[,output]")
        jobs: dict[Path, Job] = {}
        for line, row in enumerate(reader, start=2):
            image, question = (row.get("image") or "").strip(), (row.get("question") or "").strip()
            if not image or not question:
                raise ValueError(f"{path}, line {line}: image and question must both be given")
            img = Path(image) if Path(image).is_absolute() else path.parent / image
            job = jobs.setdefault(img, Job(img, [], []))
            job.questions.append(question)
            output = (row.get("output") or "").strip()
            job.stems.append(output or None)  # type: ignore[union-attr]
    if not jobs:
        raise ValueError(f"{path}: the manifest has no rows")
    return list(jobs.values())


def resolve_jobs(image: str, questions: list[str]) -> tuple[list[Job], bool]:
    """Jobs for the command's IMAGE argument; the flag says whether this is a batch."""
    p = Path(image)
    if p.suffix.lower() == ".csv" and p.is_file():
        if questions:
            raise ValueError("give questions either on the command line or in the manifest, not both")
        return read_manifest(p), True
    if not questions:
        raise ValueError("no question given: segearth predict IMAGE \"QUESTION\" [MORE QUESTIONS]")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in RASTER_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no rasters ({', '.join(sorted(RASTER_SUFFIXES))}) in folder {p}")
        return [Job(f, list(questions)) for f in files], True
    if any(ch in image for ch in "*?["):
        files = sorted(Path(f) for f in glob.glob(image) if Path(f).suffix.lower() in RASTER_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no rasters match {image!r}")
        return [Job(f, list(questions)) for f in files], True
    return [Job(p, list(questions))], False


def ensure_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PermissionError(f"cannot create output folder {folder}: {exc.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"output folder {folder} is not writable")


def load_predictor(model: Path | None, task: str, device: str, dtype: str) -> tuple[Predictor, str]:
    from .checkpoint import load_model_and_tokenizer

    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if task not in ("reasoning", "referring"):
        raise ValueError(f"--task must be reasoning or referring, got {task!r}")
    folder = resolve_model(model)  # None = the built-in segearth-nano
    net, tokenizer = load_model_and_tokenizer(folder, device=device, dtype=DTYPES[dtype])
    name = "segearth-nano" if model is None else folder.resolve().name
    return Predictor(net, tokenizer, task=task), name


def run_predict_command(
    image: str, questions: list[str], model: Path | None, out: Path, *, mode: str, tile_size: int | None,
    overlap: int, bands: str | None, probabilities: bool, simplify: float, min_area: float, task: str,
    device: str, dtype: str, overwrite: bool, console: Console,
) -> int:
    """Returns the exit code: 0 when every job succeeded, 1 when some batch items failed."""
    if mode not in ("scene", "tiles"):
        raise ValueError(f"--mode must be scene or tiles, got {mode!r}")
    if tile_size is not None and tile_size < 32:
        raise ValueError(f"--tile-size must be at least 32 pixels, got {tile_size}")
    opts = PredictOptions(
        out_dir=out, mode=mode, bands=parse_bands(bands), tile_size=tile_size, overlap=overlap,  # type: ignore[arg-type]
        probabilities=probabilities, simplify=simplify, min_area=min_area, overwrite=overwrite,
    )
    jobs, is_batch = resolve_jobs(image, questions)
    ensure_writable(out)
    if not is_batch:  # fail fast on a bad raster before loading the model
        open_raster(jobs[0].image)
    predictor, model_name = load_predictor(model, task, device, dtype)
    report = BatchReport()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("predicting", total=None)
        for job in jobs:
            progress.update(bar, description=f"{job.image.name}")
            try:
                info = open_raster(job.image)
                units = work_units(info, len(job.questions), opts, predictor.image_size)
                progress.update(bar, total=(progress.tasks[0].total or 0) + units)
                stems = None
                if job.stems and any(job.stems):
                    from .geo.paths import output_stem

                    stems = [s or output_stem(job.image, q) for s, q in zip(job.stems, job.questions)]
                result = predict_raster(predictor, job.image, job.questions, replace(opts), model_name, stems,
                                        progress=lambda n: progress.advance(bar, n))
                report.done.append((job, result))
            except (ValueError, FileNotFoundError, FileExistsError, PermissionError) as exc:
                if not is_batch:
                    raise
                report.failed.append((job.image, str(exc)))
                console.print(f"[red]skipped[/] {job.image}: {exc}", highlight=False, soft_wrap=True)
    _summary(report, console)
    return 1 if report.failed else 0


def _summary(report: BatchReport, console: Console) -> None:
    table = Table(title="segearth predict")
    for col in ("image", "question", "regions", "target %", "mask"):
        table.add_column(col)
    for job, result in report.done:
        for r in result.results:  # type: ignore[attr-defined]
            table.add_row(job.image.name, r.question, str(r.polygons), f"{100 * r.target_fraction:.1f}", str(r.mask))
        for notice in result.notices:  # type: ignore[attr-defined]
            console.print(f"[yellow]note[/] {notice}", highlight=False, soft_wrap=True)  # notices name their file
    console.print(table)
    if report.failed:
        console.print(f"[bold red]{len(report.failed)} item(s) failed[/]; {len(report.done)} succeeded", highlight=False)

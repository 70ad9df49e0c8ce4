"""``segearth predict``: resolve the inputs (file, URL, folder, glob, CSV manifest), check what is cheap
to check, load the model once, run every job with a progress bar, and report per-item failures
without stopping the batch. With ``--ray`` the jobs run on a Ray cluster instead (:mod:`segearth.scale`),
through the same :func:`run_job` and summary."""

from __future__ import annotations

import csv
import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .api import load_predictor
from .errors import InputError
from .geo.paths import confined_output, is_remote, output_stem, source_name
from .pipeline import Progress as Tick
from .pipeline import check_raster, work_units
from .predict import PredictOptions, RasterResult, predict_raster

if TYPE_CHECKING:
    from .predictor import Predictor
    from .scale import ScaleOptions

__all__ = ["load_predictor", "parse_bands", "read_manifest", "resolve_jobs", "run_job", "run_predict_command"]

RASTER_SUFFIXES = {".tif", ".tiff", ".jpg", ".jpeg", ".png", ".jp2", ".img", ".vrt"}
ITEM_ERRORS = (ValueError, OSError)  # a bad raster or an unwritable output fails its batch item, not the batch


@dataclass
class Job:
    image: str | Path  # a local path, or a URL / GDAL virtual path passed to rasterio untouched
    questions: list[str]
    stems: list[str | None] | None = None  # output names from a manifest (None: derived)


@dataclass
class BatchReport:
    done: list[RasterResult] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    earlier: list[tuple[str, str]] = field(default_factory=list)  # (image, question) finished by an earlier run

    def fail(self, name: str, message: str, console: Console) -> None:
        self.failed.append((name, message))
        console.print(f"[red]skipped[/] {escape(name)}: {escape(message)}", highlight=False, soft_wrap=True)


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    if text is None or text == "":
        return None
    try:
        bands = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise InputError(f"--bands must be comma-separated 1-based band numbers like 4,3,2, got {text!r}") from None
    if any(b < 1 for b in bands):
        raise InputError(f"--bands are 1-based: got {text!r}")
    if len(bands) not in (1, 3):
        raise InputError(f"--bands takes 1 band (grey) or 3 bands (R,G,B), got {text!r}")
    return bands


def read_manifest(path: Path, out_dir: Path) -> list[Job]:
    """CSV with a header ``image,question[,output]``; relative image paths are relative to the CSV,
    outputs are names inside ``out_dir`` (subfolders allowed, nothing outside it)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = set(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read the manifest ({exc})") from None
    if not {"image", "question"} <= fields:
        raise InputError(f"{path}: a manifest needs a header with columns image,question[,output]")
    jobs: dict[str, Job] = {}
    for line, row in enumerate(rows, start=2):
        image, question = (row.get("image") or "").strip(), (row.get("question") or "").strip()
        if not image or not question:
            raise InputError(f"{path}, line {line}: image and question must both be given")
        source: str | Path = image if is_remote(image) or Path(image).is_absolute() else path.parent / image
        job = jobs.setdefault(str(source), Job(source, [], []))
        output = (row.get("output") or "").strip()
        stem = None
        if output:
            try:
                stem = str(confined_output(out_dir, output).relative_to(out_dir.resolve()))
            except ValueError as exc:
                raise InputError(f"{path}, line {line}: {exc}") from None
        if question in job.questions:
            continue  # a repeated question is answered once
        job.questions.append(question)
        job.stems.append(stem)  # type: ignore[union-attr]
    if not jobs:
        raise InputError(f"{path}: the manifest has no rows")
    return list(jobs.values())


def resolve_jobs(image: str, questions: list[str], out_dir: Path) -> tuple[list[Job], bool]:
    """Jobs for the command's IMAGE argument; the flag says whether this is a batch."""
    questions = list(dict.fromkeys(questions))
    if is_remote(image):
        if not questions:
            raise InputError("no question given: segearth predict IMAGE \"QUESTION\" [MORE QUESTIONS]")
        return [Job(image, questions)], False
    p = Path(image)
    if p.suffix.lower() == ".csv" and p.is_file():
        if questions:
            raise InputError("give questions either on the command line or in the manifest, not both")
        return read_manifest(p, out_dir), True
    if not questions:
        raise InputError("no question given: segearth predict IMAGE \"QUESTION\" [MORE QUESTIONS]")
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


def job_stems(job: Job, opts: PredictOptions, model_name: str) -> list[str]:
    """Output stem per question: the manifest's name where it gives one, else derived (see ``output_stem``)."""
    given = job.stems or [None] * len(job.questions)
    reading = opts.reading()
    return [s or output_stem(job.image, q, reading=reading, model=model_name)
            for s, q in zip(given, job.questions, strict=True)]


def run_job(predictor: Predictor, model_name: str, job: Job, opts: PredictOptions, progress: Tick | None = None,
            planned: Tick | None = None) -> RasterResult:
    """One image and its questions, as the single-process loop and a Ray worker both run it.

    ``planned`` receives the number of model calls once the header is read, ``progress`` each finished one.
    The result holds plain values only, so a worker can send it back to the driver.
    """
    info = check_raster(job.image, opts)
    if planned is not None:
        planned(work_units(info, len(job.questions), opts, predictor.image_size))
    return predict_raster(predictor, job.image, job.questions, opts, model_name, job_stems(job, opts, model_name),
                          progress=progress)


def progress_bar(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=False)


def run_predict_command(
    image: str, questions: list[str], model: str | None, opts: PredictOptions, *, task: str, device: str,
    dtype: str, console: Console, quantize: str = "none",
    scale: ScaleOptions | None = None, presence_threshold: float | None = None,
) -> int:
    """Returns the exit code: 0 when every job succeeded, 1 when some batch items failed."""
    jobs, is_batch = resolve_jobs(image, questions, opts.out_dir)
    ensure_writable(opts.out_dir)
    if not is_batch:  # fail fast on a bad raster or band before loading the model
        check_raster(jobs[0].image, opts)
    if scale is not None:
        from .scale import run_on_ray

        load = dict(task=task, device=device, dtype=dtype, quantize=quantize,  # load_predictor's, on every worker
                    presence_threshold=presence_threshold)
        report = run_on_ray(jobs, model, opts, scale, load, console)
        _summary(report, opts.out_dir, console)
        return 1 if report.failed else 0
    predictor, model_name = load_predictor(model, task=task, device=device, dtype=dtype, quantize=quantize,
                                           presence_threshold=presence_threshold)
    report = BatchReport()
    with progress_bar(console) as progress:
        bar = progress.add_task("predicting", total=None)
        for job in jobs:
            name = source_name(job.image)
            progress.update(bar, description=escape(name))
            try:
                report.done.append(run_job(
                    predictor, model_name, job, opts, progress=lambda n: progress.advance(bar, n),
                    planned=lambda n: progress.update(bar, total=(progress.tasks[0].total or 0) + n)))
            except ITEM_ERRORS as exc:
                if not is_batch:
                    raise
                report.fail(name, str(exc), console)
    _summary(report, opts.out_dir, console)
    return 1 if report.failed else 0


def _summary(report: BatchReport, out_dir: Path, console: Console) -> None:
    """One row per answer; "not here": max p below the presence threshold (the model found too little)."""
    table = Table(title=f"segearth predict → {escape(str(out_dir))}")
    for col in ("image", "question", "regions", "target %", "mean p", "max p"):
        table.add_column(col, overflow="fold")
    for name, question in report.earlier:
        table.add_row(escape(name), escape(question), "done by an earlier run, skipped", "", "", "")
    for result in report.done:
        for r in result.results:
            if r.skipped:
                table.add_row(escape(result.info.name), escape(r.question), "outputs exist, skipped", "", "", "")
                continue
            s = r.scores
            table.add_row(escape(result.info.name), escape(r.question), str(r.polygons) if r.present else "not here",
                          f"{100 * s.target_fraction:.1f}", f"{s.mean_probability:.2f}", f"{s.max_probability:.2f}")
        for notice in result.notices:
            console.print(f"[yellow]note[/] {escape(notice)}", highlight=False, soft_wrap=True)
    console.print(table)
    if report.failed:
        console.print(f"[bold red]{len(report.failed)} item(s) failed[/]; {len(report.done)} succeeded",
                      highlight=False)

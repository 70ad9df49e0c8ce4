"""``segearth predict --ray ADDRESS``: the batch of :mod:`segearth.batch` on a Ray cluster.

Each worker is a Ray actor that loads the model once and runs whole jobs — one image with all its
questions — through :func:`segearth.batch.run_job`, the code of the single-process run: the image is
encoded once for all its questions, a large raster in tiles mode stays on one worker, and the worker
writes the outputs exactly as a single-process run does (same names and bytes, staged and atomic,
nothing overwritten without ``--overwrite``). ``--out`` must therefore be a folder that every node sees
at the same path (a shared filesystem).

The driver keeps at most ``QUEUE_PER_WORKER`` jobs per worker in flight, so its memory does not grow
with the number of inputs, shows one progress bar, and appends every finished (image, question) to
``segearth-done.jsonl`` in the output folder (flushed and fsynced). Rerunning the same command skips
the items recorded there whose files all exist. Ray is imported only here, when ``--ray`` is used.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from .api import display_name, load_predictor
from .batch import ITEM_ERRORS, BatchReport, Job, job_stems, progress_bar, run_job
from .errors import InputError
from .geo.paths import is_remote, source_name
from .predict import PredictOptions, RasterResult, output_paths

DONE_LOG = "segearth-done.jsonl"
QUEUE_PER_WORKER = 2  # one job running, one waiting: no worker idles while the driver books a result
MAX_RESTARTS = 3  # a worker killed (out of memory, a crash in a library) is restarted, its job reported failed


@dataclass
class ScaleOptions:
    """Where and how wide to run: ``address`` is ``local``, ``auto`` or ``ray://HOST:PORT``."""

    address: str
    workers: int | None = None  # None: as many as the cluster's CPUs (GPUs) hold, at most one per job
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        if self.address not in ("local", "auto") and not re.fullmatch(r"ray://[^\s/:]+:\d+", self.address):
            raise InputError(f"--ray takes local, auto or ray://HOST:PORT, got {self.address!r}")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--workers must be at least 1, got {self.workers}")
        if not self.cpus_per_worker > 0:
            raise InputError(f"--cpus-per-worker must be more than 0, got {self.cpus_per_worker:g}")
        if self.gpus_per_worker < 0:
            raise InputError(f"--gpus-per-worker must be 0 or more, got {self.gpus_per_worker:g}")

    @classmethod
    def from_cli(cls, address: str | None, workers: int | None, cpus_per_worker: float | None,
                 gpus_per_worker: float | None, device: str) -> ScaleOptions | None:
        """The options of ``segearth predict``, checked before any work; ``None`` (run here) without ``--ray``."""
        if address is None:
            if (workers, cpus_per_worker, gpus_per_worker) != (None, None, None):
                raise InputError("--workers, --cpus-per-worker and --gpus-per-worker need --ray")
            return None
        scale = cls(address, workers, 1.0 if cpus_per_worker is None else cpus_per_worker,
                    0.0 if gpus_per_worker is None else gpus_per_worker)
        # Ray shows a worker only the GPUs it reserves, so the device and the reservation must agree.
        if device.startswith("cuda") and scale.gpus_per_worker == 0:
            raise InputError(f"--device {device} with --ray needs --gpus-per-worker (e.g. 1)")
        if scale.gpus_per_worker > 0 and not device.startswith("cuda"):
            raise InputError(f"--gpus-per-worker reserves GPUs that --device {device} would not use; add --device cuda")
        return scale


class DoneLog:
    """``segearth-done.jsonl``: one JSON line per finished (image, question) with its outputs, relative to
    the output folder (so a moved folder still resumes). An item counts as done only if its recorded
    outputs are exactly the ones this run would write (same options, model, mode) and all exist."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.path = out_dir / DONE_LOG
        self._done: set[tuple[tuple[str, str], ...]] = set()
        self._file: Any = None
        try:
            text = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{self.path}: cannot read the record of finished items ({exc})") from None
        self._torn = bool(text) and not text.endswith("\n")  # a crash cut the last line short
        for line in text.splitlines():
            try:
                self._done.add(self._key(json.loads(line)["outputs"]))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a line torn by a crash: that item simply runs again

    @staticmethod
    def _key(outputs: dict[str, str]) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(outputs.items()))

    def _relative(self, paths: dict[str, Path]) -> dict[str, str]:
        return {k: Path(p).relative_to(self.out_dir).as_posix() for k, p in paths.items()}

    def finished(self, paths: dict[str, Path]) -> bool:
        return self._key(self._relative(paths)) in self._done and all(p.exists() for p in paths.values())

    def record(self, image: str | Path, question: str, paths: dict[str, Path]) -> None:
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
            if self._torn:
                self._file.write("\n")  # or the next record would be glued to the torn line
        line = {"image": str(image), "question": question, "outputs": self._relative(paths)}
        self._file.write(json.dumps(line, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class Worker:
    """A Ray actor: the model loaded once, then whole jobs one after another."""

    def __init__(self, model: str | None, load: dict[str, Any], opts: PredictOptions, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)  # the CPUs this worker reserved, not every core of its node
        self.opts = opts
        self.error: str | None = None
        try:
            self.predictor, self.model_name = load_predictor(model, **load)
        except ITEM_ERRORS as exc:  # reported by ready(): the driver stops with this one line
            self.error = str(exc)

    def ready(self) -> str | None:
        return self.error

    def run(self, job: Job) -> tuple[RasterResult | None, str | None]:
        try:
            return run_job(self.predictor, self.model_name, job, self.opts), None
        except ITEM_ERRORS as exc:
            return None, str(exc)


def run_on_ray(jobs: list[Job], model: str | None, opts: PredictOptions, scale: ScaleOptions,
               load: dict[str, Any], console: Console) -> BatchReport:
    """Run ``jobs`` on Ray workers; the report has the same shape as a single-process run's."""
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs Ray: pip install 'segearth[ray]'") from None
    # Workers do not share the driver's working directory: every local path they get is absolute.
    opts = replace(opts, out_dir=Path(os.path.abspath(opts.out_dir)))
    if model is not None and Path(model).is_dir():
        model = os.path.abspath(model)
    report = BatchReport()
    log = DoneLog(opts.out_dir)
    todo = _pending(jobs, opts, display_name(model), log, report)
    if report.earlier:
        console.print(f"{len(report.earlier)} item(s) finished by an earlier run ({DONE_LOG}): skipped",
                      highlight=False)
    if not todo:
        return report
    started = _connect(ray, scale)
    workers: list[Any] = []
    try:
        workers = _start_workers(ray, scale, model, load, opts, len(todo), console)
        _drain(ray, workers, todo, log, report, console)
    finally:
        for worker in workers:
            ray.kill(worker)
        log.close()
        if started:
            ray.shutdown()
    return report


def _pending(jobs: list[Job], opts: PredictOptions, model_name: str, log: DoneLog, report: BatchReport) -> list[Job]:
    """The jobs with their output names fixed here and the questions recorded as finished left out."""
    todo = []
    for job in jobs:
        image = job.image if is_remote(job.image) else Path(os.path.abspath(job.image))
        stems = job_stems(job, opts, model_name)
        keep = [i for i, stem in enumerate(stems) if opts.overwrite or not log.finished(output_paths(stem, opts))]
        report.earlier += [(source_name(image), q) for i, q in enumerate(job.questions) if i not in keep]
        if keep:
            todo.append(Job(image, [job.questions[i] for i in keep], [stems[i] for i in keep]))
    return todo


def _connect(ray: Any, scale: ScaleOptions) -> bool:
    """Connect to (or start) Ray; True when this call started the connection and must end it."""
    if ray.is_initialized():  # a Ray the caller started (a notebook, the tests): used as it is
        return False
    quiet = dict(log_to_driver=False, logging_level=logging.WARNING)  # worker logs stay in Ray's log folder
    try:
        if scale.address == "local":
            wanted = math.ceil((scale.workers or 0) * scale.cpus_per_worker)
            ray.init(num_cpus=max(os.cpu_count() or 1, wanted), include_dashboard=False, **quiet)
        else:
            ray.init(address=scale.address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise InputError(f"cannot connect to Ray at {scale.address}: {_first_line(exc)}") from None
    return True


def _start_workers(ray: Any, scale: ScaleOptions, model: str | None, load: dict[str, Any], opts: PredictOptions,
                   jobs: int, console: Console) -> list[Any]:
    have = ray.cluster_resources()
    fits = have.get("CPU", 0) // scale.cpus_per_worker
    if scale.gpus_per_worker:
        fits = min(fits, have.get("GPU", 0) // scale.gpus_per_worker)
    n = max(1, min(scale.workers or int(fits), jobs))  # a worker that would get no job loads no model
    if n > fits:
        wanted = f"{n} worker(s) × {scale.cpus_per_worker:g} CPU, {scale.gpus_per_worker:g} GPU"
        held = f"{have.get('CPU', 0):g} CPU, {have.get('GPU', 0):g} GPU"
        if scale.address == "local":  # nothing would ever free them: Ray would wait forever
            raise InputError(f"{wanted} do not fit on this machine ({held})")
        console.print(f"[yellow]note[/] {wanted} do not fit in the cluster now ({held}); waiting for nodes",
                      highlight=False)
    actor = ray.remote(Worker).options(num_cpus=scale.cpus_per_worker, num_gpus=scale.gpus_per_worker,
                                       max_restarts=MAX_RESTARTS)
    workers = [actor.remote(model, load, opts, max(1, int(scale.cpus_per_worker))) for _ in range(n)]
    try:
        with console.status(f"loading {display_name(model)} on {n} Ray worker(s)"):
            errors = [e for e in ray.get([w.ready.remote() for w in workers]) if e]
    except ray.exceptions.RayError as exc:
        errors = [f"a Ray worker could not start: {_first_line(exc)}"]
    if errors:
        for worker in workers:
            ray.kill(worker)
        raise InputError(errors[0])
    return workers


def _drain(ray: Any, workers: list[Any], jobs: list[Job], log: DoneLog, report: BatchReport,
           console: Console) -> None:
    """Feed the workers, at most QUEUE_PER_WORKER jobs each, and book each result as it arrives."""
    queue = deque(jobs)
    in_flight: dict[Any, tuple[Any, Job]] = {}

    def submit(worker: Any) -> None:
        if queue:
            job = queue.popleft()
            in_flight[worker.run.remote(job)] = (worker, job)

    with progress_bar(console) as progress:
        bar = progress.add_task("predicting", total=sum(len(job.questions) for job in jobs))
        for _ in range(QUEUE_PER_WORKER):
            for worker in workers:  # round-robin, so the first jobs spread over every worker
                submit(worker)
        while in_flight:
            [ref], _ = ray.wait(list(in_flight), num_returns=1)
            worker, job = in_flight.pop(ref)
            submit(worker)
            try:
                result, error = ray.get(ref)
            except ray.exceptions.RayError as exc:  # the worker died, or a bug: the batch goes on
                result, error = None, _first_line(exc)
            if result is None:
                report.fail(source_name(job.image), str(error), console)
            else:
                report.done.append(result)
                for answer in result.results:
                    log.record(job.image, answer.question, answer.paths)
            progress.advance(bar, len(job.questions))
            if report.failed:
                progress.update(bar, description=f"predicting ({len(report.failed)} failed)")


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)  # a RayTaskError carries the worker's own exception
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)

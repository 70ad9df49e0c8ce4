"""The ``segearth`` command line."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .errors import exit_with_user_error, report_bug
from .evaluate import eval_command
from .options import DEFAULT_MAX_PIXELS, DType, Mode, Quantize, Task
from .serve.command import serve
from .train.command import train

app = typer.Typer(
    help="Geospatial pixel reasoning with SegEarth-R1: ask a question about a raster, get its mask.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()


@app.command()
def parity(
    fixture_dir: Path = typer.Argument(..., help="Folder with config.json, weights.safetensors and io.safetensors "
                                       "recorded from the official implementation."),
    device: str = typer.Option("cpu", help="Torch device to run on (cpu, cuda, mps)."),
    debug: bool = typer.Option(False, help="Show full tracebacks."),
) -> None:
    """Check numerical parity with the official SegEarth-R1 implementation.

    Builds the model from the fixture's config.json, loads its weights with the same loader used for
    released checkpoints, replays the recorded inputs, and prints one line per recorded tensor
    (name, shape, max abs diff). Exits 1 if a float tensor differs by more than 1e-4 or an integer /
    binary tensor differs at all.
    """
    import torch

    from .parity import FLOAT_TOLERANCE, run_parity

    try:
        results, missing = run_parity(fixture_dir, device=device)
    except Exception as exc:  # sorted there: user error (one line) or bug
        exit_with_user_error(exc, debug)
    table = Table(title=f"parity with {fixture_dir}", show_lines=False)
    for col in ("tensor", "shape", "max abs diff", "rule", "result"):
        table.add_column(col)
    for r in results:
        rule = "exact" if r.exact else f"<= {FLOAT_TOLERANCE:g}"
        verdict = "[green]ok[/]" if r.ok else "[bold red]FAIL[/]"
        table.add_row(r.name, str(list(r.shape)), f"{r.max_abs_diff:.3e}", rule, verdict)
    for name in missing:
        table.add_row(name, "?", "-", "-", "[bold red]NOT COMPUTED[/]")
    Console(width=max(console.width, 110)).print(table)
    worst = max((r.max_abs_diff for r in results), default=0.0)
    failed = [r.name for r in results if not r.ok] + missing
    print(f"torch {torch.__version__}, device {device}: {len(results)} tensors compared, {len(failed)} failed")
    print(f"max abs diff: {worst:.3e}")
    if failed:
        raise typer.Exit(code=1)


@app.command("check-checkpoint")
def check_checkpoint(
    model: str = typer.Argument(..., help="A checkpoint folder (config.json + weights), a built-in name (nano) or a "
                                "Hugging Face hub id org/name[@revision]."),
    debug: bool = typer.Option(False, help="Show full tracebacks."),
) -> None:
    """Load a checkpoint and report what was loaded, ignored or wrong (no forward pass).

    Example: segearth check-checkpoint earth-insights/SegEarth-R1-EarthReason
    """
    from .checkpoint import load_pretrained
    from .weights import resolve_model

    try:
        folder = resolve_model(model)
        net = load_pretrained(folder)
    except Exception as exc:  # sorted there: user error (one line) or bug
        exit_with_user_error(exc, debug)
    n = sum(p.numel() for p in net.parameters())
    console.print(f"[green]ok[/]: {model} loaded from {folder}, {n:,} parameters, image size {net.cfg.image_size}",
                  highlight=False)


@app.command()
def predict(
    image: str = typer.Argument(..., help="A raster (GeoTIFF/COG, JPEG, PNG, anything GDAL opens: also https://…, "
                                "/vsicurl/…, s3://…), a folder of rasters, a quoted glob ('scenes/*.tif') or a CSV "
                                "manifest with columns image,question[,output]."),
    questions: list[str] = typer.Argument(None, help="One or more questions (not needed with a CSV manifest)."),
    model: str = typer.Option(None, "--model", "-m", help="A built-in model (nano), a checkpoint folder, or a Hugging "
                              "Face hub id org/name[@revision] (downloaded once into the hub cache; HF_HUB_OFFLINE=1 "
                              "uses the cache only). Default: the built-in segearth-nano."),
    out: Path = typer.Option(Path("segearth-out"), "--out", "-o", help="Output folder (created if needed)."),
    mode: Mode = typer.Option(Mode.scene, help="scene: one prediction on a decimated overview (fast, whole-scene "
                              "context); tiles: full-resolution windows blended in the overlaps (small targets, "
                              "huge scenes)."),
    tile_size: int = typer.Option(None, help="Tiles mode: window size in raster pixels (default: model input size). "
                                  "Smaller windows are read enlarged: small buildings at 0.5 m do better at 192."),
    overlap: int = typer.Option(128, help="Tiles mode: overlap between windows in pixels."),
    bands: str = typer.Option(None, help="1-based bands to use as RGB, e.g. 4,3,2, or one band for grey (default: "
                              "the first three; 1- and 2-band rasters are shown as grey). Water questions on "
                              "R,G,B,NIR imagery: 4,1,2 (false colour; NAIP lakes IoU 0.75 against 0.33)."),
    probabilities: bool = typer.Option(False, help="Write float32 probabilities (NAME_prob.tif) instead of the "
                                       "0/255 mask (NAME_mask.tif)."),
    simplify: float = typer.Option(0.0, help="Polygon simplification tolerance in CRS units (0 = none)."),
    min_area: float = typer.Option(None, help="Drop polygons smaller than this many m² (pixels² without a CRS). "
                                   "Default: a quarter of one model output cell (smaller regions are "
                                   "interpolation fringes)."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, help="Refuse rasters with more pixels than this (checked "
                                   "from the header before reading)."),
    task: Task = typer.Option(Task.reasoning, help="Prompt template: reasoning (EarthReason) or referring "
                              "(RRSIS-D). Models trained with one template always use it."),
    device: str = typer.Option("cpu", help="Torch device (cpu, cuda, mps)."),
    dtype: DType = typer.Option(DType.auto, help="Precision of the model. auto: bfloat16 on CUDA, and on CPUs with "
                                "native bf16 (AMX, AVX512-BF16) for models of 100 M parameters or more (released "
                                "size: ~2x faster there); float32 for the built-in nano and on other CPUs (bf16 is "
                                "emulated there: 2-3x slower)."),
    quantize: Quantize = typer.Option(Quantize.none, help="int8: Linear weights stored as int8 (CPU, float32): "
                                      "faster and smaller, masks agree closely but not exactly with float32."),
    presence_threshold: float = typer.Option(None, min=0.0, max=1.0, help="Answer \"not here\" (empty mask, no "
                                             "polygon) when an answer's max probability is below this. Default: "
                                             "the model's own (segearth-nano: calibrated on its training "
                                             "questions; released models: none); 0 turns it off."),
    overwrite: bool = typer.Option(False, help="Replace existing output files."),
    skip_existing: bool = typer.Option(False, help="Skip questions whose outputs already exist (resume a batch)."),
    ray: str = typer.Option(None, "--ray", metavar="ADDRESS", help="Run on Ray (pip install 'segearth\\[ray]'): local "
                            "(start Ray on this machine), auto (the cluster this machine belongs to) or "
                            "ray://HOST:PORT. --out must be a folder every node mounts at the same path. A rerun "
                            "skips the items recorded in --out/segearth-done.jsonl."),
    workers: int = typer.Option(None, help="With --ray: number of workers, one model each (default: as many as "
                                "the cluster's CPUs, or GPUs, hold)."),
    cpus_per_worker: float = typer.Option(None, help="With --ray: CPUs reserved per worker, also its torch threads "
                                          "(default 1)."),
    gpus_per_worker: float = typer.Option(None, help="With --ray: GPUs per worker (1, or 0.5 for two workers per "
                                          "GPU; needs --device cuda). Default 0."),
    debug: bool = typer.Option(False, help="Show full tracebacks."),
) -> None:
    """Ask questions about rasters; write a georeferenced mask, polygons and a preview per question.

    Outputs in --out, per image and question, named INPUT_QUESTION_HASH (the full input name, the
    question, and a hash of the input path, question, mode and model, so different inputs never
    collide): NAME_mask.tif (Cloud Optimized GeoTIFF, uint8 255 = target / 0 = background, same CRS
    and transform as the input, input nodata kept out; NAME_prob.tif with --probabilities),
    NAME.geojson (WGS84) and NAME.gpkg (raster CRS, a layer named after the question) with one
    feature per region (question, model, area_m2, mean probability), and NAME_preview.png. Files of a
    question appear together when all are complete. Existing files are never replaced without
    --overwrite. The table at the end gives each answer's target share and probabilities: an answer
    whose max p is below the presence threshold is "not here" (its mask empty, no polygon).

    Examples:
      segearth predict scene.tif "where could floodwater collect?"
      segearth predict naip.tif "where could a boat travel?" --bands 4,1,2   (R,G,B,NIR: false colour)
      segearth predict scene.tif "the roads" -m earth-insights/SegEarth-R1-EarthReason
      segearth predict https://example.org/cog.tif "the water"
      segearth predict jobs.csv --out results/ --skip-existing
      segearth predict /shared/scenes "the water" --ray auto --workers 8 --out /shared/out
    """
    from .batch import parse_bands, run_predict_command
    from .predict import PredictOptions
    from .scale import ScaleOptions

    try:
        scale = ScaleOptions.from_cli(ray, workers, cpus_per_worker, gpus_per_worker, device)
        opts = PredictOptions(
            out_dir=out, mode=mode, bands=parse_bands(bands), tile_size=tile_size, overlap=overlap,
            probabilities=probabilities, simplify=simplify, min_area=min_area, overwrite=overwrite,
            skip_existing=skip_existing, max_pixels=max_pixels,
        )
        code = run_predict_command(image, questions or [], model, opts, task=task.value, device=device,
                                   dtype=dtype.value, quantize=quantize.value, console=console, scale=scale,
                                   presence_threshold=presence_threshold)
    except Exception as exc:  # sorted there: user error (one line) or bug
        exit_with_user_error(exc, debug)
    raise typer.Exit(code=code)


app.command()(serve)
app.command("eval")(eval_command)
app.command()(train)


def main(args: list[str] | None = None) -> None:
    """The console entry point: the app, plus a bug report for an error no command handled."""
    try:
        app(sys.argv[1:] if args is None else args)
    except Exception as exc:  # the commands report user errors themselves: a bug
        report_bug(exc)
        sys.exit(1)

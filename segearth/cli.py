"""The ``segearth`` command line."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .errors import USER_ERRORS, exit_with_user_error
from .evaluate import eval_command
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
    except USER_ERRORS as exc:
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
    folder: Path = typer.Argument(..., help="An official save_pretrained folder (config.json + weights)."),
    debug: bool = typer.Option(False, help="Show full tracebacks."),
) -> None:
    """Load a checkpoint folder and report what was loaded, ignored or wrong (no forward pass)."""
    from .checkpoint import load_pretrained

    try:
        model = load_pretrained(folder)
    except USER_ERRORS as exc:
        exit_with_user_error(exc, debug)
    n = sum(p.numel() for p in model.parameters())
    console.print(f"[green]ok[/]: {folder} loaded, {n:,} parameters, image size {model.cfg.image_size}")


@app.command()
def predict(
    image: str = typer.Argument(..., help="A raster (GeoTIFF/COG, JPEG, PNG), a folder of rasters, a quoted glob "
                                "('scenes/*.tif') or a CSV manifest with columns image,question[,output]."),
    questions: list[str] = typer.Argument(None, help="One or more questions (not needed with a CSV manifest)."),
    model: Path = typer.Option(None, "--model", "-m", help="Checkpoint folder (config.json, *.safetensors, tokenizer); default: the built-in segearth-nano."),
    out: Path = typer.Option(Path("segearth-out"), "--out", "-o", help="Output folder (created if needed)."),
    mode: str = typer.Option("scene", help="scene: one prediction on a decimated overview; "
                             "tiles: full-resolution windows blended in the overlaps (small targets, huge scenes)."),
    tile_size: int = typer.Option(None, help="Tiles mode: window size in raster pixels (default: model input size)."),
    overlap: int = typer.Option(128, help="Tiles mode: overlap between windows in pixels."),
    bands: str = typer.Option(None, help="1-based bands to use as RGB, e.g. 4,3,2 (default: the first three; "
                              "1- and 2-band rasters are replicated)."),
    probabilities: bool = typer.Option(False, help="Write float32 probabilities instead of a 0/255 mask."),
    simplify: float = typer.Option(0.0, help="Polygon simplification tolerance in CRS units (0 = none)."),
    min_area: float = typer.Option(0.0, help="Drop polygons smaller than this many m² (pixels² without a CRS)."),
    task: str = typer.Option("reasoning", help="Prompt template: reasoning (EarthReason) or referring (RRSIS-D)."),
    device: str = typer.Option("cpu", help="Torch device (cpu, cuda, mps)."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
    overwrite: bool = typer.Option(False, help="Replace existing output files."),
    debug: bool = typer.Option(False, help="Show full tracebacks."),
) -> None:
    """Ask questions about rasters; write a georeferenced mask, polygons and a preview per question.

    Outputs in --out, named after the input and the question: NAME_mask.tif (uint8 0/255, same CRS and
    transform, nodata kept out), NAME.geojson (WGS84) and NAME.gpkg (raster CRS) with one feature per
    region (question, model, area, mean probability), and NAME_preview.png. Existing files are never
    replaced without --overwrite.

    Examples:
      segearth predict scene.tif "where could floodwater collect?" -m ckpt/
      segearth predict naip.tif "the buildings" "the water" -m ckpt/ --bands 4,3,2 --mode tiles
      segearth predict jobs.csv -m ckpt/ --out results/
    """
    from .batch import run_predict_command

    try:
        code = run_predict_command(
            image, questions or [], model, out, mode=mode, tile_size=tile_size, overlap=overlap, bands=bands,
            probabilities=probabilities, simplify=simplify, min_area=min_area, task=task, device=device,
            dtype=dtype, overwrite=overwrite, console=console,
        )
    except USER_ERRORS as exc:
        exit_with_user_error(exc, debug)
    raise typer.Exit(code=code)


app.command()(serve)
app.command("eval")(eval_command)
app.command()(train)


def main() -> None:  # pragma: no cover - console entry point
    app(sys.argv[1:])

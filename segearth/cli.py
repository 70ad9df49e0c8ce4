"""The ``segearth`` command line."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    help="Geospatial pixel reasoning with SegEarth-R1: ask a question about a raster, get its mask.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError)


def fail(exc: BaseException, debug: bool) -> None:
    """Print a user error as one readable message (traceback only with --debug) and exit 2."""
    if debug:
        raise exc
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


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
        fail(exc, debug)
        return
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
        fail(exc, debug)
        return
    n = sum(p.numel() for p in model.parameters())
    console.print(f"[green]ok[/]: {folder} loaded, {n:,} parameters, image size {model.cfg.image_size}")


def main() -> None:  # pragma: no cover - console entry point
    app(sys.argv[1:])

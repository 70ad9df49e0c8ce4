"""The ``segearth serve`` command: load a checkpoint once and serve it with uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import USER_ERRORS, exit_with_user_error
from ..options import DType, Task


def serve(
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="A built-in model (nano), a checkpoint folder, or a Hugging Face hub id "
                     "org/name[@revision]; default: the built-in segearth-nano."),
    ] = None,
    host: Annotated[
        str,
        typer.Option(help="Address to listen on. Keep 127.0.0.1 unless other machines must reach the server."),
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(help="TCP port."),
    ] = 8000,
    max_upload_mb: Annotated[
        float,
        typer.Option(help="Largest accepted raster upload in MB (larger ones get 413)."),
    ] = 512.0,
    max_queue: Annotated[
        int,
        typer.Option(help="Requests that may wait for the model; more get 503 with Retry-After."),
    ] = 8,
    timeout: Annotated[
        float,
        typer.Option(help="Seconds a question may wait and run before the request gets 504."),
    ] = 300.0,
    cache_mb: Annotated[
        float,
        typer.Option(help="Memory budget in MB for cached image features (least recently used dropped first)."),
    ] = 1024.0,
    max_questions: Annotated[
        int,
        typer.Option(help="Questions allowed in one request."),
    ] = 16,
    max_question_chars: Annotated[
        int,
        typer.Option(help="Longest question in characters (checked before tokenising)."),
    ] = 1000,
    max_question_tokens: Annotated[
        int,
        typer.Option(help="Longest question in tokens (the model's context may allow fewer)."),
    ] = 512,
    max_body_kb: Annotated[
        int,
        typer.Option(help="Largest request body in KB for everything but uploads (413 before parsing)."),
    ] = 64,
    max_answers: Annotated[
        int,
        typer.Option(help="Answers kept per image; older ones are dropped with their files."),
    ] = 100,
    max_megapixels: Annotated[
        float,
        typer.Option(help="Largest upload in megapixels (width x height from its header, before decoding)."),
    ] = 1500.0,
    max_images: Annotated[
        int,
        typer.Option(help="Uploaded images kept at once."),
    ] = 100,
    max_disk_mb: Annotated[
        float,
        typer.Option(help="Disk budget in MB of the work folder (uploads, previews, rendered masks); 409 beyond."),
    ] = 20480.0,
    prepare_workers: Annotated[
        int,
        typer.Option(help="Uploads decoded at once, each in its own process."),
    ] = 2,
    prepare_timeout: Annotated[
        float,
        typer.Option(help="Seconds an upload may take to decode before it is stopped (422)."),
    ] = 120.0,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(help="Host name clients may use besides the --host address, localhost and 127.0.0.1 "
                          "(repeatable; '*' allows any, e.g. behind a proxy that checks it)."),
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(help="Another web site allowed to call the API from a browser, e.g. https://gis.example.org "
                          "(repeatable; default: none)."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="SEGEARTH_TOKEN", show_envvar=True,
                     help="Require 'Authorization: Bearer TOKEN' on every request (the page asks for it once). "
                          "Prefer the environment variable: a command line is visible to other users."),
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(help="Where the temporary upload folder is created (default: the system temp folder)."),
    ] = None,
    task: Annotated[
        Task,
        typer.Option(help="Prompt template: reasoning (EarthReason) or referring (RRSIS-D)."),
    ] = Task.reasoning,
    device: Annotated[
        str,
        typer.Option(help="Torch device (cpu, cuda, mps)."),
    ] = "cpu",
    dtype: Annotated[
        DType,
        typer.Option(help="Precision of the model. auto: bfloat16 on CUDA, and on CPUs with native bf16 "
                          "(AMX, AVX512-BF16) for models of 100 M parameters or more; else float32."),
    ] = DType.auto,
    presence_threshold: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Answer \"not here\" (empty mask, no polygon) when an answer's max "
                     "probability is below this. Default: the model's own; 0 turns it off."),
    ] = None,
    debug: Annotated[
        bool,
        typer.Option(help="Show full tracebacks."),
    ] = False,
) -> None:
    """Serve a model over HTTP: a REST API for GIS pipelines and a web page for people.

    The model is loaded once. Open http://HOST:PORT/ for the page (upload or pick an image, see it on
    a map in its true place, ask questions, see the answers as polygons, download masks) and
    http://HOST:PORT/docs for the API:

      POST   /images                           upload a GeoTIFF/PNG/JPEG -> id + metadata
      POST   /images/{id}/ask                  {"questions": [...], "format": "geojson"} -> scores + links
      GET    /images/{id}/answers/{n}/{format} the mask as geotiff, geojson or png
      GET    /images, DELETE /images/{id}, /health, /models

    Questions wait in a bounded queue (one forward at a time); a second question about the same
    image reuses its cached features. Uploads live in a temporary folder removed at shutdown (and
    by the next start if the server was killed). Every input is limited before work starts
    (upload bytes and pixels, question characters and tokens, body size, disk); uploads are decoded
    in separate processes under a time limit.

    Exposure: only the Host names above are answered, writes from other web sites are refused, and
    with a token every request needs it. Listening beyond 127.0.0.1 (--host 0.0.0.0) without a
    token lets anyone on the network use the model and read uploads.

    Examples:
      segearth serve -m ckpt/
      SEGEARTH_TOKEN=$(openssl rand -hex 16) segearth serve --host 0.0.0.0 --allowed-host gpu01.lab
      curl -F file=@scene.tif http://127.0.0.1:8000/images
      curl -H 'Content-Type: application/json' -d '{"questions": ["the roads"]}' \\
           http://127.0.0.1:8000/images/ID/ask
    """
    err = Console(stderr=True)
    try:
        import uvicorn

        from ..api import load_predictor
        from .app import create_app
        from .security import DEFAULT_HOSTS
        from .settings import ServeSettings

        settings = ServeSettings(
            max_upload_mb=max_upload_mb, max_queue=max_queue, request_timeout_s=timeout, cache_mb=cache_mb,
            max_questions=max_questions, max_question_chars=max_question_chars,
            max_question_tokens=max_question_tokens, max_body_kb=max_body_kb, max_answers=max_answers,
            max_megapixels=max_megapixels, max_images=max_images, max_disk_mb=max_disk_mb,
            prepare_workers=prepare_workers, prepare_timeout_s=prepare_timeout, workdir=workdir,
            allowed_hosts=(*DEFAULT_HOSTS, host, *(allowed_host or [])), cors_origins=tuple(cors_origin or []),
            token=token,
        )
        if workdir is not None and not workdir.is_dir():
            raise FileNotFoundError(f"--workdir {workdir} is not a folder")
        predictor, model_name = load_predictor(model, task.value, device, dtype.value,
                                               presence_threshold=presence_threshold)
        app = create_app(predictor, model_name, settings)
    except USER_ERRORS as exc:
        exit_with_user_error(exc, debug)
    err.print(f"serving {escape(model_name)} on http://{host}:{port}/ (API docs at /docs)", highlight=False)
    if host not in ("127.0.0.1", "localhost", "::1") and token is None:
        err.print("warning: listening beyond this machine without --token: anyone who can reach the port can use "
                  "it; clients must use one of the --allowed-host names", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level="debug" if debug else "info")

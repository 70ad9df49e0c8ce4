"""The FastAPI application of ``segearth serve``: REST API + the offline web page.

Status codes a client can rely on (``detail`` is one readable sentence, the same text the CLI
prints, never a server path; see :mod:`.errors`): ``404`` unknown image or answer (also an answer
dropped because the image already has ``max_answers`` newer ones), ``413`` upload over the size
limit, image over the pixel limit (read from its header) or request body over ``max_body_kb``,
``422`` bad raster / question / request (questions are limited in number, characters and tokens) or
an upload whose decoding outlived ``prepare_timeout_s``, ``500`` a render or preparation that crashed
(never a partial file), ``503`` + ``Retry-After`` when the model queue or the upload preparation
queue is full, ``504`` when a request outlives the timeout, ``409`` when the server already holds
``max_images`` uploads or its work folder holds ``max_disk_mb``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from ..geo.read import RasterInputError
from ..predictor import Predictor
from .cache import FeatureCache
from .engine import Engine, RenderCancelled
from .errors import TEMP, ServerFault, error_response, path_scrubber
from .limits import BodyLimit, QuestionError, StoreFull
from .queue import ModelQueue, QueueFull, QueueTimeout
from .routes import image_routes
from .schemas import ModelInfo
from .security import Guard
from .settings import ServeSettings
from .store import ImageStore, UnknownImage
from .upload import UploadRejected, UploadTooLarge
from .workers import PreparePool

STATIC = Path(str(resources.files("segearth.serve") / "static"))
PUBLIC = {"/", "/docs"}  # pages without data, reachable without the token so they can ask for it


def install_error_handlers(app: FastAPI, folders: list[Path]) -> None:
    """Map exception classes to status codes; no path inside ``folders`` or the temp folder reaches a client."""
    scrub = path_scrubber([*folders, *TEMP])

    def handle(status: int, headers: dict[str, str] | None = None):  # a decorator factory
        async def handler(_: Request, exc: Exception) -> JSONResponse:
            extra = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFull) else {}
            return error_response(status, str(exc), {**(headers or {}), **extra} or None, scrub)
        return handler

    for classes, status, headers in [
        ((UnknownImage,), 404, None),
        ((UploadTooLarge,), 413, {"Connection": "close"}),  # the rest of the body is not read
        ((RasterInputError, UploadRejected, QuestionError), 422, None),
        ((ServerFault,), 500, None),
        ((QueueFull, RenderCancelled), 503, None),
        ((QueueTimeout,), 504, None),
        ((StoreFull,), 409, None),  # a full image store or work folder: delete images to make room
    ]:
        for cls in classes:
            app.add_exception_handler(cls, handle(status, headers))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # One sentence for people (the page shows it), the structured list for programs.
        parts = [f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'request'}: {e['msg']}" for e in exc.errors()]
        return error_response(422, "; ".join(parts), scrub=scrub, errors=jsonable_encoder(exc.errors()))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises after sending this, so the server logs the traceback once.
        return error_response(500, "internal server error (the server log has the details)", scrub=scrub)


def create_app(predictor: Predictor, model_name: str, settings: ServeSettings | None = None) -> FastAPI:
    """Build the app around an already loaded model (loaded once, shared by every request)."""
    settings = settings or ServeSettings()
    store = ImageStore(settings.workdir, settings.max_images, settings.max_disk_bytes)
    queue = ModelQueue(settings.max_queue, settings.request_timeout_s)
    preparing = PreparePool(settings.prepare_workers, settings.prepare_waiting, settings.prepare_timeout_s)
    engine = Engine(predictor, model_name, FeatureCache(settings.cache_bytes), queue, settings.max_answers)
    max_tokens = min(settings.max_question_tokens, predictor.max_question_tokens())
    started = time.time()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:  # uploads never outlive the server
            engine.closing.set()  # renders in progress stop at their next block
            preparing.shutdown()
            queue.shutdown()
            store.close()

    app = FastAPI(
        title="segearth serve",
        summary="Ask questions about your rasters with SegEarth-R1; get what `segearth predict` writes (mask and "
                "probability GeoTIFFs, GeoJSON, GeoPackage, preview) and a PNG mask.",
        version="1",
        lifespan=lifespan,
        # /docs is our own page on the vendored Swagger UI (FastAPI's loads it from a CDN); ReDoc is not
        # shipped, so it is off rather than a page that stays blank offline.
        docs_url=None, redoc_url=None, swagger_ui_oauth2_redirect_url=None,
    )
    app.state.settings, app.state.store, app.state.engine, app.state.preparing = settings, store, engine, preparing
    install_error_handlers(app, [store.root, *([settings.workdir.resolve()] if settings.workdir else [])])
    # Added innermost first. Uploads stream to disk under their own limit; every other body is small JSON.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_kb * 1024,
                       exempt=lambda scope: scope["method"] == "POST" and scope["path"] == "/images")
    app.add_middleware(Guard, allowed_hosts=settings.allowed_hosts, cors_origins=settings.cors_origins,
                       token=settings.token, public=lambda path: path in PUBLIC or path.startswith("/static/"))
    if settings.cors_origins:  # outermost, so refusals carry CORS headers the other site can read
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"],
                           allow_headers=["Authorization", "Content-Type"], expose_headers=["Retry-After"])
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html")

    @app.get("/health", tags=["server"])
    def health() -> dict:
        """Liveness plus the queue and cache state."""
        return {
            "status": "ok", "uptime_s": round(time.time() - started, 1), "images": len(store.list()),
            "queue": {"outstanding": queue.outstanding, "capacity": queue.capacity, "completed": queue.completed},
            "preparing": {"outstanding": preparing.outstanding, "capacity": preparing.capacity},
            "cache": engine.cache.stats(),
            "limits": {"max_upload_mb": settings.max_upload_mb, "max_megapixels": settings.max_megapixels,
                       "max_questions": settings.max_questions, "max_question_chars": settings.max_question_chars,
                       "max_question_tokens": max_tokens, "max_body_kb": settings.max_body_kb,
                       "max_answers": settings.max_answers, "max_images": settings.max_images,
                       "max_disk_mb": settings.max_disk_mb, "request_timeout_s": settings.request_timeout_s,
                       "prepare_timeout_s": settings.prepare_timeout_s},
        }

    @app.get("/models", tags=["server"], response_model=list[ModelInfo])
    def models() -> list[ModelInfo]:
        """The model this server answers with (one per server)."""
        model = predictor.model
        first = next(model.parameters())
        return [ModelInfo(name=model_name, task=predictor.task, image_size=predictor.image_size,
                          device=str(first.device), dtype=str(first.dtype).removeprefix("torch."),
                          parameters=sum(p.numel() for p in model.parameters()),
                          presence_threshold=predictor.presence_threshold)]

    app.include_router(image_routes(settings, store, engine, preparing, max_tokens))
    return app

"""The FastAPI application of ``segearth serve``: REST API + the offline web page.

Status codes a client can rely on: ``404`` unknown image or answer, ``413`` upload over the size
limit, ``422`` bad raster / question / request (``detail`` is one readable sentence, the same text
the CLI prints), ``503`` + ``Retry-After`` when the model queue is full, ``504`` when a request
outlives the timeout, ``507`` when the server already holds ``max_images`` uploads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from ..batch import parse_bands
from ..geo.paths import output_stem
from ..geo.read import RasterInputError
from ..predictor import Predictor
from .cache import FeatureCache
from .engine import Engine, Format, QuestionError
from .queue import ModelQueue, QueueFull, QueueTimeout
from .schemas import AnswerOut, AskRequest, AskResponse, ImageMeta, ModelInfo
from .settings import ServeSettings
from .store import ImageStore, UnknownImage, prepare_image
from .upload import UploadRejected, UploadTooLarge, save_multipart, save_raw, sniff_format

STATIC = Path(str(resources.files("segearth.serve") / "static"))
MEDIA = {"geotiff": "image/tiff", "geojson": "application/geo+json", "png": "image/png"}
SUFFIX = {"geotiff": "_mask.tif", "geojson": ".geojson", "png": "_mask.png"}
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file in a multipart body

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"],
                           "properties": {"file": {"type": "string", "format": "binary"}}},
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UnknownImage)
    async def unknown(_: Request, exc: UnknownImage) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(UploadTooLarge)
    async def too_large(_: Request, exc: UploadTooLarge) -> JSONResponse:
        return _error(413, str(exc), {"Connection": "close"})  # the rest of the body is not read

    @app.exception_handler(RasterInputError)
    @app.exception_handler(UploadRejected)
    @app.exception_handler(QuestionError)
    async def unprocessable(_: Request, exc: ValueError) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(QueueFull)
    async def busy(_: Request, exc: QueueFull) -> JSONResponse:
        return _error(503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(QueueTimeout)
    async def timeout(_: Request, exc: QueueTimeout) -> JSONResponse:
        return _error(504, str(exc))

    @app.exception_handler(OverflowError)
    async def full(_: Request, exc: OverflowError) -> JSONResponse:
        return _error(507, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # One sentence for people (the page shows it), the structured list for programs.
        parts = [f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'request'}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(parts), "errors": jsonable_encoder(exc.errors())}, status_code=422)


def create_app(predictor: Predictor, model_name: str, settings: ServeSettings | None = None) -> FastAPI:
    """Build the app around an already loaded model (loaded once, shared by every request)."""
    settings = settings or ServeSettings()
    store = ImageStore(settings.workdir, settings.max_images)
    queue = ModelQueue(settings.max_queue, settings.request_timeout_s)
    engine = Engine(predictor, model_name, FeatureCache(settings.cache_bytes), queue)
    started = time.time()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:  # uploads never outlive the server
            queue.shutdown()
            store.close()

    app = FastAPI(
        title="segearth serve",
        summary="Ask questions about your rasters with SegEarth-R1; get masks as GeoTIFF, GeoJSON or PNG.",
        version="1",
        lifespan=lifespan,
    )
    app.state.settings, app.state.store, app.state.engine = settings, store, engine
    _install_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/health", tags=["server"])
    def health() -> dict:
        """Liveness plus the queue and cache state."""
        return {
            "status": "ok", "uptime_s": round(time.time() - started, 1), "images": len(store.list()),
            "queue": {"outstanding": queue.outstanding, "capacity": queue.capacity, "completed": queue.completed},
            "cache": engine.cache.stats(),
            "limits": {"max_upload_mb": settings.max_upload_mb, "max_questions": settings.max_questions,
                       "request_timeout_s": settings.request_timeout_s},
        }

    @app.get("/models", tags=["server"], response_model=list[ModelInfo])
    def models() -> list[ModelInfo]:
        """The model this server answers with (one per server)."""
        model = predictor.model
        first = next(model.parameters())
        return [ModelInfo(name=model_name, task=predictor.task, image_size=predictor.image_size,
                          device=str(first.device), dtype=str(first.dtype).removeprefix("torch."),
                          parameters=sum(p.numel() for p in model.parameters()))]

    @app.post("/images", tags=["images"], status_code=201, response_model=ImageMeta, openapi_extra=_UPLOAD_BODY)
    async def upload(
        request: Request,
        filename: str = Query("", description="Name to show for a raw-body upload (multipart sends its own)"),
        bands: str | None = Query(None, description="1-based bands to show as RGB, e.g. 4,3,2"),
    ) -> ImageMeta:
        """Upload a GeoTIFF, PNG or JPEG (multipart field `file`, or the raw file as the body)."""
        try:
            band_tuple = parse_bands(bands)
        except ValueError as exc:
            raise UploadRejected(str(exc).replace("--bands", "bands")) from None
        limit = settings.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
            raise UploadTooLarge(f"the upload is larger than the limit of {settings.max_upload_mb:.3g} MB")
        image_id, folder = store.reserve()
        try:
            tmp = folder / "upload.part"
            content_type = request.headers.get("content-type", "")
            if content_type.startswith("multipart/form-data"):
                size, filename = await save_multipart(request.stream(), content_type, tmp, limit)
            else:
                size = await save_raw(request.stream(), tmp, limit)
            fmt, suffix = sniff_format(tmp)
            path = tmp.rename(folder / f"raster{suffix}")
            label = Path(filename.replace("\\", "/")).name[:200] or f"upload{suffix}"  # display only
            record = await asyncio.to_thread(
                prepare_image, image_id, folder, path, label, fmt, size, band_tuple,
                engine.image_size, settings.display_max,
            )
        except BaseException:
            store.release(image_id)
            raise
        store.add(record)
        return ImageMeta.of(record)

    @app.get("/images", tags=["images"], response_model=list[ImageMeta])
    def list_images() -> list[ImageMeta]:
        return [ImageMeta.of(r) for r in store.list()]

    @app.get("/images/{image_id}", tags=["images"], response_model=ImageMeta)
    def get_image(image_id: str) -> ImageMeta:
        return ImageMeta.of(store.get(image_id))

    @app.delete("/images/{image_id}", tags=["images"], status_code=204)
    def delete_image(image_id: str) -> Response:
        """Forget an image: its files, answers and cached features."""
        store.delete(image_id)
        engine.cache.discard(image_id)
        return Response(status_code=204)

    @app.get("/images/{image_id}/preview.png", tags=["images"], response_class=FileResponse)
    def preview(image_id: str) -> FileResponse:
        """The RGB preview the page shows (same stretch as the model's input)."""
        return FileResponse(store.get(image_id).folder / "display.png", media_type="image/png")

    @app.post("/images/{image_id}/ask", tags=["questions"], response_model=AskResponse)
    async def ask(image_id: str, body: AskRequest) -> AskResponse:
        """Ask one or more questions; each answer has scores and a link to its mask."""
        record = store.get(image_id)
        questions = [body.questions] if isinstance(body.questions, str) else list(body.questions)
        if not questions:
            raise QuestionError("no question given")
        if len(questions) > settings.max_questions:
            raise QuestionError(f"{len(questions)} questions in one request; this server allows at most "
                                f"{settings.max_questions}")
        logits, cached, seconds = await engine.ask(record, questions)
        answers = await asyncio.to_thread(engine.store_answers, record, questions, logits, body.format)
        return AskResponse(image_id=image_id, format=body.format, cached_features=cached,
                           model_seconds=round(seconds, 4),
                           answers=[AnswerOut.of(image_id, a, body.format) for a in answers])

    @app.get("/images/{image_id}/answers", tags=["questions"], response_model=list[AnswerOut])
    def answers(image_id: str) -> list[AnswerOut]:
        """Every question asked about the image, oldest first."""
        record = store.get(image_id)
        with record.lock:
            history = list(record.answers)
        return [AnswerOut.of(image_id, a) for a in history]

    @app.get("/images/{image_id}/answers/{number}/{fmt}", tags=["questions"], response_class=FileResponse)
    def download(image_id: str, number: int, fmt: Format) -> FileResponse:
        """One answer's mask as `geotiff`, `geojson` or `png` (rendered on first request)."""
        record = store.get(image_id)
        answer = record.answer(number)
        path = engine.render(record, answer, fmt)
        name = output_stem(Path(record.filename), answer.question) + SUFFIX[fmt]
        return FileResponse(path, media_type=MEDIA[fmt], filename=name)

    return app

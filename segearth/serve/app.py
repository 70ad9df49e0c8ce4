"""The FastAPI application of ``segearth serve``: REST API + the offline web page.

Status codes a client can rely on (``detail`` is one readable sentence, the same text the CLI
prints, never a server path; see :mod:`.errors`): ``404`` unknown image or answer (also an answer
dropped because the image already has ``max_answers`` newer ones), ``413`` upload over the size
limit, image over the pixel limit (read from its header) or request body over ``max_body_kb``,
``422`` bad raster / question / request (questions are limited in number, characters and tokens) or
an upload whose decoding outlived ``prepare_timeout_s``, ``500`` a render or preparation that crashed
(never a partial file), ``503`` + ``Retry-After`` when the model queue or the upload preparation
queue is full, ``504`` when a request outlives the timeout, ``507`` when the server already holds
``max_images`` uploads or its work folder holds ``max_disk_mb``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from ..batch import parse_bands
from ..geo.paths import output_stem
from ..predictor import Predictor
from .cache import FeatureCache
from .engine import FILE_NAMES, Engine, Format
from .errors import install_error_handlers
from .limits import BodyLimit, DiskFull, check_questions
from .queue import ModelQueue
from .schemas import AnswerOut, AskRequest, AskResponse, ImageMeta, ModelInfo
from .settings import ServeSettings
from .store import ImageRecord, ImageStore
from .upload import UploadRejected, UploadTooLarge, save_multipart, save_raw, sniff_format
from .workers import PreparePool

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
        summary="Ask questions about your rasters with SegEarth-R1; get masks as GeoTIFF, GeoJSON or PNG.",
        version="1",
        lifespan=lifespan,
    )
    app.state.settings, app.state.store, app.state.engine, app.state.preparing = settings, store, engine, preparing
    install_error_handlers(app, [store.root, *([settings.workdir.resolve()] if settings.workdir else [])])
    # Uploads stream to disk under their own limit; every other body is small JSON.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_kb * 1024,
                       exempt=lambda scope: scope["method"] == "POST" and scope["path"] == "/images")
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
            "limits": {"max_upload_mb": settings.max_upload_mb, "max_megapixels": settings.max_megapixels,
                       "max_questions": settings.max_questions, "max_question_chars": settings.max_question_chars,
                       "max_question_tokens": max_tokens, "max_body_kb": settings.max_body_kb,
                       "max_answers": settings.max_answers, "max_images": settings.max_images,
                       "max_disk_mb": settings.max_disk_mb, "request_timeout_s": settings.request_timeout_s},
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
        declared = request.headers.get("content-length")
        declared_bytes = int(declared) if declared and declared.isdigit() else 0
        if declared_bytes > settings.max_upload_bytes + MULTIPART_OVERHEAD:
            raise UploadTooLarge(f"the upload is larger than the limit of {settings.max_upload_mb:.3g} MB")
        disk_left = await asyncio.to_thread(store.disk_left)
        if declared_bytes > disk_left + MULTIPART_OVERHEAD:
            raise DiskFull(f"the upload does not fit in the {disk_left / 2**20:.4g} MB left of the server's work "
                           "folder; delete some images first")
        limit = min(settings.max_upload_bytes, disk_left)
        image_id, folder = store.reserve()
        try:
            tmp = folder / "upload.part"
            content_type = request.headers.get("content-type", "")
            try:
                if content_type.startswith("multipart/form-data"):
                    size, filename = await save_multipart(request.stream(), content_type, tmp, limit)
                else:
                    size = await save_raw(request.stream(), tmp, limit)
            except UploadTooLarge:
                if disk_left < settings.max_upload_bytes:  # the disk budget, not the upload limit, was hit
                    raise DiskFull("the upload does not fit in what is left of the server's work folder; "
                                   "delete some images first") from None
                raise
            fmt, suffix = sniff_format(tmp)
            path = tmp.rename(folder / f"raster{suffix}")
            label = Path(filename.replace("\\", "/")).name[:200] or f"upload{suffix}"  # display only
            prepared = await preparing.run(folder, path, label, band_tuple, engine.image_size, settings.display_max,
                                           settings.max_pixels)
        except BaseException:
            store.release(image_id)
            raise
        record = ImageRecord(id=image_id, filename=label, format=fmt, folder=folder, path=path, size_bytes=size,
                             bands=band_tuple, **prepared.fields())
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
        check_questions(questions, settings.max_questions, settings.max_question_chars, max_tokens,
                        engine.count_tokens)
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
        if not (answer.folder / FILE_NAMES[fmt]).exists():
            store.disk_left()  # a render adds a file: refused once the work folder is full
        path = engine.render(record, answer, fmt)
        name = output_stem(Path(record.filename), answer.question) + SUFFIX[fmt]
        return FileResponse(path, media_type=MEDIA[fmt], filename=name)

    return app

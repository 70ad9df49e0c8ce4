"""The image and question routes of the REST API (the app in :mod:`.app` wires them to their state)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse

from ..batch import parse_bands
from ..geo.paths import output_stem
from .engine import Engine
from .limits import DiskFull, check_questions
from .mapview import MAP_FILE
from .render import FILES, Format
from .schemas import AnswerOut, AskRequest, AskResponse, ImageMeta
from .settings import ServeSettings
from .store import ImageRecord, ImageStore, UnknownImage
from .upload import (
    UploadRejected,
    UploadTooLarge,
    save_multipart,
    save_raw,
    sniff_format,
)
from .workers import PreparePool

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


def image_routes(settings: ServeSettings, store: ImageStore, engine: Engine, preparing: PreparePool,
                 max_tokens: int) -> APIRouter:
    """Upload, list, delete, preview, ask, history and downloads."""
    router = APIRouter()

    @router.post("/images", tags=["images"], status_code=201, response_model=ImageMeta, openapi_extra=_UPLOAD_BODY)
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
        # The upload's bytes are reserved against the work folder's budget before any is written (a declared
        # size, else up to the upload limit): two concurrent uploads cannot both pass the check.
        image_id, folder, reserved = await asyncio.to_thread(
            store.reserve, declared_bytes or None, settings.max_upload_bytes + MULTIPART_OVERHEAD)
        limit = min(settings.max_upload_bytes, reserved)
        try:
            tmp = folder / "upload.part"
            content_type = request.headers.get("content-type", "")
            try:
                if content_type.startswith("multipart/form-data"):
                    size, filename = await save_multipart(request.stream(), content_type, tmp, limit)
                else:
                    size = await save_raw(request.stream(), tmp, limit)
            except UploadTooLarge:
                if reserved < settings.max_upload_bytes:  # the disk budget, not the upload limit, was hit
                    raise DiskFull("the upload does not fit in what is left of the server's work folder; "
                                   "delete some images first") from None
                raise
            fmt, suffix = sniff_format(tmp)
            path = tmp.rename(folder / f"raster{suffix}")
            label = Path(filename.replace("\\", "/")).name[:200] or f"upload{suffix}"  # display only
            prepared = await preparing.run(folder, path, label, band_tuple, engine.image_size, settings.display_max,
                                           settings.max_pixels)
            record = ImageRecord(id=image_id, filename=label, format=fmt, folder=folder, path=path,
                                 size_bytes=size, bands=band_tuple, **prepared.fields())
            await asyncio.to_thread(store.add, record)
        except BaseException:
            store.release(image_id)
            raise
        return ImageMeta.of(record)

    @router.get("/images", tags=["images"], response_model=list[ImageMeta])
    def list_images() -> list[ImageMeta]:
        return [ImageMeta.of(r) for r in store.list()]

    @router.get("/images/{image_id}", tags=["images"], response_model=ImageMeta)
    def get_image(image_id: str) -> ImageMeta:
        return ImageMeta.of(store.get(image_id))

    @router.delete("/images/{image_id}", tags=["images"], status_code=204)
    def delete_image(image_id: str) -> Response:
        """Forget an image: its files, answers and cached features."""
        store.delete(image_id)
        engine.cache.discard(image_id)
        return Response(status_code=204)

    @router.get("/images/{image_id}/preview.png", tags=["images"], response_class=FileResponse)
    def preview(image_id: str) -> FileResponse:
        """The RGB preview the page shows (same stretch as the model's input)."""
        return FileResponse(store.get(image_id).folder / "display.png", media_type="image/png")

    @router.get("/images/{image_id}/map.png", tags=["images"], response_class=FileResponse)
    def map_image(image_id: str) -> FileResponse:
        """The preview as RGBA on the web map's grid (Web Mercator for georeferenced images); see `map`."""
        record = store.get(image_id)
        if record.map_view is None:
            raise UnknownImage(f"image {image_id} cannot be shown on a web map (its CRS has no Web Mercator place)")
        return FileResponse(record.folder / MAP_FILE, media_type="image/png")

    @router.post("/images/{image_id}/ask", tags=["questions"], response_model=AskResponse)
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
                           answers=[AnswerOut.of(record, a, body.format) for a in answers])

    @router.get("/images/{image_id}/answers", tags=["questions"], response_model=list[AnswerOut])
    def answers(image_id: str) -> list[AnswerOut]:
        """Every question asked about the image, oldest first."""
        record = store.get(image_id)
        with record.lock:
            history = list(record.answers)
        return [AnswerOut.of(record, a) for a in history]

    @router.get("/images/{image_id}/answers/{number}/{fmt}", tags=["questions"], response_class=FileResponse)
    def download(image_id: str, number: int, fmt: Format) -> FileResponse:
        """One answer as a file (rendered on first request), the files `segearth predict` writes and two images.

        `geotiff` 0/255 mask and `probabilities` float32 GeoTIFF (full resolution, the upload's grid),
        `geojson` and `gpkg` polygons, `preview` the CLI's preview PNG; `png` an RGBA mask on the preview
        grid and `overlay` the same on the grid of `map.png` (the page's raster layer).
        """
        record = store.get(image_id)
        answer = record.answer(number)
        kind = FILES[fmt]
        if not (answer.folder / kind.name).exists():
            store.disk_left()  # a render adds a file: refused once the work folder is full
        path = engine.render(record, answer, fmt)
        name = output_stem(Path(record.filename), answer.question) + kind.suffix
        return FileResponse(path, media_type=kind.media, filename=name)

    return router

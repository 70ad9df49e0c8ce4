"""Request and response bodies of the REST API (they make the OpenAPI page at ``/docs``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from .render import DOWNLOADS, Format
from .store import Answer, ImageRecord


class MapPlacement(BaseModel):
    mode: Literal["geographic", "pixel"] = Field(
        description="geographic: Web Mercator map, bounds in degrees; pixel: a plain plane in the GeoJSON's units")
    bounds: list[list[float]] = Field(description="[[south, west], [north, east]] of `url` (lat/lon or y/x)")
    flip_y: bool = Field(description="pixel mode: the map's y is minus the GeoJSON's y (rows grow downwards)")
    url: str = Field(description="RGBA image (nodata transparent) to stretch over `bounds`")


class ImageMeta(BaseModel):
    id: str = Field(description="Server-chosen id of the uploaded image")
    filename: str = Field(description="The client's file name (a label only)")
    format: str = Field(description="GeoTIFF, PNG or JPEG, from the file's content")
    size_bytes: int
    width: int
    height: int
    bands: int
    dtypes: list[str]
    crs: str | None = Field(description="CRS as EPSG code or WKT; null without georeferencing")
    bounds: list[float] = Field(description="left, bottom, right, top in CRS units (pixels without a CRS)")
    transform: list[float] = Field(description="Affine a, b, c, d, e, f of the full-resolution grid")
    georeferenced: bool
    rgb_bands: list[int] = Field(description="1-based bands shown as red, green, blue")
    notices: list[str]
    preview: dict[str, int | str] = Field(description="url, width and height of the RGB preview")
    map: MapPlacement | None = Field(description="Where the web page's map shows the image (null: it cannot)")
    answers: int = Field(description="Questions asked about this image so far")

    @classmethod
    def of(cls, r: ImageRecord) -> ImageMeta:
        info = r.info
        h, w = r.display_shape
        return cls(
            id=r.id, filename=r.filename, format=r.format, size_bytes=r.size_bytes, width=info.width,
            height=info.height, bands=info.count, dtypes=list(info.dtypes),
            crs=info.crs.to_string() if info.crs else None, bounds=list(info.bounds),
            transform=list(info.transform)[:6], georeferenced=info.has_georeference,
            rgb_bands=list(r.stretch.bands), notices=r.notices,
            preview={"url": f"/images/{r.id}/preview.png", "width": w, "height": h}, answers=len(r.answers),
            map=None if r.map_view is None else MapPlacement(
                mode=r.map_view.mode, bounds=[list(c) for c in r.map_view.bounds], flip_y=r.map_view.flip_y,
                url=f"/images/{r.id}/map.png"),
        )


class AskRequest(BaseModel):
    questions: list[str] | str = Field(description="One question or a list of questions",
                                       examples=[["where could floodwater collect after heavy rain?"]])
    format: Format = Field(
        "geojson", description="Format rendered now and linked as `url` (the others render on demand)")


class Scores(BaseModel):
    target_fraction: float = Field(description="Share of the valid pixels in the mask")
    mean_probability: float = Field(description="Mean probability inside the mask (0 when empty)")
    max_probability: float = Field(description="Highest probability anywhere in the image")
    present: bool = Field(description="False: \"not here\": the max probability is below the model's presence "
                          "threshold (see /models), and the mask, polygons and images are empty")
    regions: int = Field(description="Number of separate polygons")
    area_m2: float | None = Field(description="Mask area in m² (null without a CRS)")


class AnswerOut(BaseModel):
    number: int
    question: str
    scores: Scores
    url: str | None = Field(None, description="Download link of the requested format")
    downloads: dict[str, str] = Field(description="Download links of every format (those `segearth predict` "
                                      "writes, and `png`, the mask on the preview grid)")
    overlay: str | None = Field(None, description="The mask as RGBA on the grid of the image's `map.png` "
                                                  "(null when the image has no map placement)")
    created: float

    @classmethod
    def of(cls, record: ImageRecord, a: Answer, fmt: str | None = None) -> AnswerOut:
        base = f"/images/{record.id}/answers/{a.number}"
        downloads = {f: f"{base}/{f}" for f in DOWNLOADS}
        return cls(number=a.number, question=a.question, scores=Scores(**a.scores),
                   url=f"{base}/{fmt}" if fmt else None, downloads=downloads, created=a.created,
                   overlay=None if record.map_view is None else f"{base}/overlay")


class AskResponse(BaseModel):
    image_id: str
    format: str
    cached_features: bool = Field(description="The image's features were already cached (fast path)")
    model_seconds: float = Field(description="Time spent on the model thread")
    answers: list[AnswerOut]


class ModelInfo(BaseModel):
    name: str
    task: str
    image_size: int
    device: str
    dtype: str
    parameters: int
    presence_threshold: float | None = Field(description="Answers whose max probability is below this are "
                                             "\"not here\" (null: any target pixel counts)")

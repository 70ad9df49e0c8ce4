"""Upload preparation: header check, stretch, preview, map image, model canvas.

:func:`prepare_files` runs in a child process (see :mod:`.workers`), never in the server: decoding is
the one step whose cost the client controls. It reads the pixel count from the header first, so a
decompression bomb is refused before any pixel is decoded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..geo.letterbox import Letterbox, letterbox
from ..geo.read import RasterInfo, RasterInputError, Stretch, compute_stretch, read_overview
from ..pipeline import read_scene
from .mapview import MapView, write_map_image
from .upload import check_pixel_count


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What the server keeps about a prepared upload (picklable: it comes back from the child)."""

    info: RasterInfo
    stretch: Stretch
    box: Letterbox  # where the model overview sits on the model canvas
    display_shape: tuple[int, int]  # (h, w) of display.png, the grid of the PNG masks
    notices: list[str]
    map_view: MapView | None  # where the page's map shows map.png (None: the CRS has no web-map place)

    def fields(self) -> dict[str, Any]:
        """The fields as keyword arguments (shallow, unlike ``dataclasses.asdict``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def client_message(exc: Exception, path: Path, filename: str) -> str:
    """The CLI's message for a bad raster, naming the client's file instead of our temp path."""
    label = filename or "upload"
    return str(exc).replace(str(path), label).replace(path.name, label)


def prepare_files(folder: Path, path: Path, filename: str, bands: tuple[int, ...] | None, model_size: int,
                  display_max: int, max_pixels: int) -> Prepared:
    """Check the header, then write display.png, map.png, valid.npy and canvas.npy.

    The model's input is the one ``segearth predict`` builds in scene mode (:func:`~segearth.pipeline.read_scene`,
    letterboxed), so the server's logits are the CLI's.
    """
    check_pixel_count(path, max_pixels)
    try:
        stretch = compute_stretch(path, bands)
        display = read_overview(path, display_max, params=stretch)
        scene = read_scene(path, display.info, stretch, model_size)
    except (RasterInputError, ValueError) as exc:
        raise RasterInputError(client_message(exc, path, filename)) from None
    if not display.valid.any():
        raise RasterInputError(f"{filename}: every pixel is nodata")
    info = display.info
    canvas, box = letterbox(scene.image, model_size)
    del scene
    np.save(folder / "canvas.npy", canvas)
    np.save(folder / "valid.npy", display.valid)
    Image.fromarray(display.image).save(folder / "display.png", format="PNG", compress_level=1)
    notices = [client_message(Exception(n), path, filename) for n in display.notices]
    map_view = write_map_image(folder, display, display_max)
    if map_view is None:
        notices.append(f"{filename}: its CRS cannot be shown on a web map; the page shows the answers' outlines only")
    return Prepared(info=info, stretch=stretch, box=box,
                    display_shape=display.image.shape[:2], notices=notices, map_view=map_view)

"""Streaming an upload to disk: multipart (browsers, ``curl -F``) or a raw body (``--data-binary``).

The body is written chunk by chunk as it arrives, so memory use does not depend on the file size,
and the size limit is enforced while streaming: the client gets ``413`` as soon as it passes the
limit, not after the whole file has been received. The client's filename is kept as a display label
only; the file on disk is named by the server.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import rasterio
from python_multipart.multipart import MultipartParser, parse_options_header
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from ..errors import InputError

# First bytes of the formats we accept -> (format name, file suffix GDAL recognises).
_MAGIC: list[tuple[bytes, str, str]] = [
    (b"II*\x00", "GeoTIFF", ".tif"),
    (b"MM\x00*", "GeoTIFF", ".tif"),
    (b"II+\x00", "GeoTIFF", ".tif"),  # BigTIFF
    (b"MM\x00+", "GeoTIFF", ".tif"),
    (b"\x89PNG\r\n\x1a\n", "PNG", ".png"),
    (b"\xff\xd8\xff", "JPEG", ".jpg"),
]


class UploadTooLarge(InputError):
    """The upload passed the configured size limit (answered with 413)."""


class UploadRejected(InputError):
    """The upload is malformed or not a GeoTIFF/PNG/JPEG (answered with 422)."""


class TooManyPixels(UploadTooLarge):
    """The raster's header declares more pixels than the server decodes (answered with 413)."""


def check_pixel_count(path: Path, max_pixels: int) -> None:
    """Refuse a decompression bomb from its header alone: a few KB can declare 100000² pixels.

    ``rasterio.open`` reads the header and nothing else; an unreadable header is left for the full
    read to report with the CLI's message.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                width, height = ds.width, ds.height
    except RasterioError:
        return
    if width * height > max_pixels:
        raise TooManyPixels(f"the image has {width * height:,} pixels ({width} x {height}); this server decodes at "
                            f"most {max_pixels:,} (--max-megapixels)")


def sniff_format(path: Path) -> tuple[str, str]:
    """(format name, suffix) from the file's first bytes; content, not the client's name, decides."""
    with open(path, "rb") as f:
        head = f.read(8)
    for magic, name, suffix in _MAGIC:
        if head.startswith(magic):
            return name, suffix
    if not head:
        raise UploadRejected("the uploaded file is empty (0 bytes)")
    raise UploadRejected("the uploaded file is not a GeoTIFF, PNG or JPEG (unrecognised file signature)")


class _Sink:
    """Writes one file's bytes and stops at the limit."""

    def __init__(self, handle: BinaryIO, limit: int) -> None:
        self.handle, self.limit, self.size = handle, limit, 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise UploadTooLarge(f"the upload is larger than the limit of {self.limit / 2**20:.3g} MB")
        self.handle.write(data)


async def save_raw(stream: AsyncIterator[bytes], dest: Path, limit: int) -> int:
    """Stream a raw request body to ``dest``; returns the byte count."""
    with open(dest, "wb") as f:
        sink = _Sink(f, limit)
        async for chunk in stream:
            sink.write(chunk)
    return sink.size


class _FilePart:
    """python-multipart callbacks that route the body of the ``file`` field into a sink."""

    def __init__(self, sink: _Sink) -> None:
        self.sink = sink
        self.found = False
        self.filename = ""
        self._in_file = False
        self._field = b""
        self._value = b""
        self._headers: dict[bytes, bytes] = {}

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
        }

    def _part_begin(self) -> None:
        self._headers, self._in_file = {}, False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
        # Only the first "file" field is kept; other form fields are ignored.
        if opts.get(b"name") == b"file" and not self.found:
            self._in_file = self.found = True
            self.filename = opts.get(b"filename", b"").decode("utf-8", "replace")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.sink.write(data[start:end])


async def save_multipart(stream: AsyncIterator[bytes], content_type: str, dest: Path, limit: int) -> tuple[int, str]:
    """Stream the ``file`` field of a multipart body to ``dest``; returns (bytes, client filename)."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadRejected("multipart upload without a boundary in its Content-Type")
    with open(dest, "wb") as f:
        part = _FilePart(_Sink(f, limit))
        parser = MultipartParser(boundary, part.callbacks())  # type: ignore[arg-type]
        try:
            async for chunk in stream:
                parser.write(chunk)
            parser.finalize()
        except UploadTooLarge:
            raise
        except Exception as exc:  # python-multipart raises its own error types for malformed bodies
            raise UploadRejected(f"malformed multipart upload: {exc}") from None
    if not part.found:
        raise UploadRejected("the multipart upload has no field named 'file'")
    return part.sink.size, part.filename

"""Remote rasters: a Cloud Optimized GeoTIFF served over HTTP with range requests."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from segearth.geo.paths import describe_source
from segearth.geo.read import (
    RasterInputError,
    compute_stretch,
    is_remote,
    open_raster,
    read_overview,
    read_valid_mask,
    read_window,
    source_name,
)

# What the docstring of segearth.geo.read recommends for remote rasters.
GDAL_ENV = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif"}


class RangeServer(ThreadingHTTPServer):
    """Serves files of ``root`` with HEAD and single ``Range: bytes=a-b`` GETs; records every request."""

    daemon_threads = True
    # GDAL opens several connections at once; the default backlog (5) can refuse one on a busy machine.
    request_queue_size = 64

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.root = root
        self.requests: list[tuple[str, str, str | None, int]] = []  # method, path, Range header, bytes sent
        self.lock = threading.Lock()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"

    def served(self, name: str) -> int:
        with self.lock:
            return sum(sent for _, path, _, sent in self.requests if path == f"/{name}")


class RangeHandler(BaseHTTPRequestHandler):
    server: RangeServer

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def _record(self, sent: int) -> None:
        with self.server.lock:
            self.server.requests.append((self.command, self.path, self.headers.get("Range"), sent))

    def _file(self) -> bytes | None:
        path = self.server.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            self._record(0)
            return None
        return path.read_bytes()

    def do_HEAD(self) -> None:
        data = self._file()
        if data is None:
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._record(0)

    def do_GET(self) -> None:
        data = self._file()
        if data is None:
            return
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match[1])
            end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
            body = data[start : end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:  # no (or a multi-) range: the whole file, which the assertions would catch
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(body)
        self._record(len(body))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RangeServer]:
    srv = RangeServer(tmp_path_factory.mktemp("served"))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def gdal_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # a proxy configured for the machine must not intercept
    with rasterio.Env(**GDAL_ENV):
        yield


def write_cog(path: Path, data: np.ndarray, nodata: float | None = None) -> Path:
    count, height, width = data.shape
    with rasterio.open(
        path, "w", driver="COG", width=width, height=height, count=count, dtype=data.dtype, crs="EPSG:32631",
        transform=from_origin(500000, 5700000, 2.0, 2.0), nodata=nodata, compress="deflate", blocksize=256,
    ) as dst:
        dst.write(data)
    return path


def test_source_helpers() -> None:
    assert is_remote("https://h/a/x.tif") and is_remote("/vsicurl/https://h/x.tif") and is_remote("s3://b/x.tif")
    assert is_remote("/vsizip/a.zip/x.tif") and is_remote("zip://a.zip!x.tif")
    assert not is_remote("/data/x.tif") and not is_remote(Path("x.tif")) and not is_remote("file:///data/x.tif")
    assert source_name("https://h/a/x.tif?X-Amz-Signature=abc") == "x.tif"
    assert source_name("/vsizip/a.zip/inner.tif") == "inner.tif" and source_name("zip://a.zip!b.tif") == "b.tif"
    # Messages never repeat credentials or a signed query string.
    assert describe_source("https://user:pw@h/x.tif?X-Amz-Signature=abc") == "https://h/x.tif?..."
    assert describe_source(Path("/data/x.tif")) == "/data/x.tif"


@pytest.mark.parametrize("form", ["{url}", "/vsicurl/{url}"])
def test_remote_cog_reads_like_the_local_file(server: RangeServer, form: str) -> None:
    name = f"scene_{len(form)}.tif"  # one file per form: GDAL caches what it fetched per URL
    data = np.random.default_rng(3).integers(100, 4000, (3, 600, 700), dtype=np.uint16)
    data[:, :50, :80] = 0
    local = write_cog(server.root / name, data, nodata=0)
    source = form.format(url=server.url(name))

    info = open_raster(source)
    assert info.path == source and info.name == name  # kept as a string, never a mangled Path
    ref = open_raster(local)
    for field in ("width", "height", "count", "dtypes", "crs", "transform", "nodata", "bounds"):
        assert getattr(info, field) == getattr(ref, field), field

    stretch = compute_stretch(source)
    assert stretch == compute_stretch(local)
    remote_scene, local_scene = read_overview(source, 256, params=stretch), read_overview(local, 256, params=stretch)
    assert np.array_equal(remote_scene.image, local_scene.image)
    assert np.array_equal(remote_scene.valid, local_scene.valid)
    window = Window(20, 30, 128, 96)
    assert np.array_equal(read_window(source, window, stretch).image, read_window(local, window, stretch).image)
    assert np.array_equal(read_valid_mask(source), read_valid_mask(local))
    assert server.served(name) > 0  # really read over HTTP


def test_window_read_fetches_only_byte_ranges(server: RangeServer) -> None:
    name = "big.tif"
    # Random values do not compress: the file is ~4 MiB, 64 tiles of 256².
    data = np.random.default_rng(4).integers(1, 255, (1, 2048, 2048), dtype=np.uint8)
    local = write_cog(server.root / name, data)
    size = local.stat().st_size
    source = server.url(name)
    stretch = compute_stretch(source)
    with server.lock:
        server.requests.clear()

    # The last tile: GDAL's read-ahead during the statistics cannot have fetched it already.
    tile = read_window(source, Window(1792, 1792, 256, 256), stretch)
    assert np.array_equal(tile.image[..., 0], data[0, 1792:, 1792:])
    gets = [r for r in server.requests if r[0] == "GET" and r[1] == f"/{name}"]
    assert gets and all(r[2] is not None for r in gets), gets  # every GET asked for a range
    assert server.served(name) < size / 8, (server.served(name), size)  # one tile is 1/64 of the pixels

    with server.lock:
        server.requests.clear()
    scene = read_overview(source, 512, params=stretch)
    assert scene.image.shape == (512, 512, 3)
    assert server.served(name) < size / 4  # the 512² overview, not the full-resolution tiles


def test_missing_remote_file_is_a_clear_error(server: RangeServer) -> None:
    url = server.url("nothing_here.tif")
    with pytest.raises(RasterInputError, match=r"nothing_here\.tif.*cannot open the remote raster") as err:
        open_raster(url)
    assert "\n" not in str(err.value) and url in str(err.value)
    with pytest.raises(RasterInputError, match="nothing_here") as err:
        open_raster("/vsicurl/" + url + "?X-Amz-Signature=secret")
    assert "secret" not in str(err.value) and "404" in str(err.value)  # GDAL's reason, not the signature


@pytest.mark.parametrize("mode", ["scene", "tiles"])
def test_the_pipeline_on_a_remote_cog_equals_the_local_run(server: RangeServer, tmp_path: Path, mode: str) -> None:
    """A URL goes through the whole raster → answer pipeline untouched: same mask, same georeferencing."""
    from segearth.api import SegEarth

    from test_pipeline import RedStub

    data = np.full((3, 300, 500), 50, np.uint8)
    data[0, 40:200, 60:140] = 230  # a red block off-centre: a flip or shift would show
    local = write_cog(server.root / f"pattern_{mode}.tif", data)
    model = SegEarth(RedStub(), "stub")
    remote = model.predict(server.url(local.name), "red", mode=mode, tile_size=256, overlap=32)
    here = model.predict(local, "red", mode=mode, tile_size=256, overlap=32)
    np.testing.assert_array_equal(remote.mask, here.mask)
    assert remote.mask[100, 100] and not remote.mask[250, 400]
    assert remote.transform == here.transform and remote.crs == here.crs
    paths = remote.save(tmp_path / "out")
    with rasterio.open(paths["mask"]) as m:
        np.testing.assert_array_equal(m.read(1) == 255, here.mask)

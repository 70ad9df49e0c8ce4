"""`segearth serve` exposure: Host allow-list, same-origin writes, CORS, bearer token, stale work folders."""

from __future__ import annotations

import fcntl
import os

import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import segearth.api
import segearth.serve.app
from segearth.serve import ServeSettings, create_app
from segearth.serve.command import serve
from segearth.serve.security import host_name

from test_serve import BASE, _raster, _upload, client, make_client, predictor  # noqa: F401 (fixtures)

TOKEN = "s3cret-token-for-tests"


def _post_raster(client: TestClient, **headers):
    with open(_raster("naip_rgbn_2019.tif"), "rb") as f:
        return client.post("/images", files={"file": ("a.tif", f, "image/tiff")}, headers=headers)


@pytest.mark.parametrize(("header", "name"), [
    ("127.0.0.1:8000", "127.0.0.1"), ("[::1]:8000", "::1"), ("LocalHost", "localhost"), ("::1", "::1"),
    ("gpu01.lab:80", "gpu01.lab"),
])
def test_host_name(header, name):
    assert host_name(header) == name


def test_foreign_host_is_refused(make_client):
    client = make_client()
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
        assert client.get("/health", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example:8000", "127.0.0.1.evil.example", "testserver", ""):
        r = client.get("/health", headers={"Host": host})
        assert r.status_code == 400 and "--allowed-host" in r.json()["detail"], host
    r = _post_raster(client, Host="rebound.example")
    assert r.status_code == 400 and client.get("/images").json() == []
    custom = make_client(allowed_hosts=("gpu01.lab",))
    assert custom.get("/health", headers={"Host": "gpu01.lab:8000"}).status_code == 200
    assert custom.get("/health", headers={"Host": "localhost"}).status_code == 400
    assert make_client(allowed_hosts=("*",)).get("/health", headers={"Host": "any.where"}).status_code == 200


def test_cross_origin_writes_are_refused_and_cors_is_closed(client):
    r = _post_raster(client, Origin="https://evil.example")
    assert r.status_code == 403 and "cross-origin" in r.json()["detail"]
    assert _post_raster(client, Origin="null").status_code == 403
    assert _post_raster(client, Origin="http://127.0.0.1:9999").status_code == 403  # another port is another site
    assert client.get("/images").json() == []
    image_id = _upload(client)["id"]  # no Origin (curl, scripts): allowed
    r = client.delete(f"/images/{image_id}", headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and len(client.get("/images").json()) == 1
    r = client.post(f"/images/{image_id}/ask", json={"questions": ["a"]}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert _post_raster(client, Origin=BASE).status_code == 201  # the page itself
    r = client.get("/images", headers={"Origin": "https://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers  # the browser hides it


def test_configured_cors_origin_may_call_the_api(make_client):
    client = make_client(cors_origins=("https://gis.example.org",))
    r = _post_raster(client, Origin="https://gis.example.org")
    assert r.status_code == 201 and r.headers["access-control-allow-origin"] == "https://gis.example.org"
    preflight = client.options("/images", headers={"Origin": "https://gis.example.org",
                                                   "Access-Control-Request-Method": "POST",
                                                   "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 200
    assert _post_raster(client, Origin="https://evil.example").status_code == 403


def test_token_is_required_on_every_data_route(make_client):
    client = make_client(token=TOKEN)
    good = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/health", "/models", "/images", "/images/x", "/openapi.json"):
        r = client.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
        assert client.get(path, headers={"Authorization": "Bearer wrong-token-123"}).status_code == 401
        assert client.get(path, headers={"Authorization": TOKEN}).status_code == 401  # no scheme
    assert _post_raster(client).status_code == 401 and client.get("/images", headers=good).json() == []
    assert client.get("/health", headers=good).status_code == 200
    assert _post_raster(client, **good).status_code == 201
    for path in ("/", "/static/app.js", "/docs"):  # the page and its code hold no data: they ask for the token
        assert client.get(path).status_code == 200, path
    assert make_client().get("/health").status_code == 200  # no token configured: open
    with pytest.raises(ValueError, match="at least 8"):
        ServeSettings(token="short")


def test_serve_command_wires_host_origin_and_token_options(monkeypatch, predictor, tmp_path):
    seen = {}
    monkeypatch.setattr(segearth.api, "load_predictor",
                        lambda *a, **kw: (seen.setdefault("load", kw), (predictor, "tiny"))[1])
    monkeypatch.setattr(segearth.serve.app, "create_app", lambda p, name, settings: seen.setdefault("s", settings))
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: seen.setdefault("run", kw))
    app = typer.Typer()
    app.command()(serve)
    result = CliRunner().invoke(app, ["--host", "0.0.0.0", "--allowed-host", "gpu01.lab", "--cors-origin",
                                      "https://gis.example.org", "--workdir", str(tmp_path),
                                      "--presence-threshold", "0.7"],
                                env={"SEGEARTH_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    assert seen["load"] == {"presence_threshold": 0.7}
    settings = seen["s"]
    assert settings.token == TOKEN and TOKEN not in repr(settings)
    assert {"0.0.0.0", "gpu01.lab", "localhost", "127.0.0.1"} <= set(settings.allowed_hosts)
    assert settings.cors_origins == ("https://gis.example.org",) and seen["run"]["host"] == "0.0.0.0"
    result = CliRunner().invoke(app, ["--host", "0.0.0.0", "--workdir", str(tmp_path)], env={"SEGEARTH_TOKEN": ""})
    assert "without --token" in result.output


def test_stale_work_folders_of_dead_servers_are_removed_at_start(predictor, tmp_path):
    def folder(name: str, lock: bool) -> str:
        (tmp_path / name / "img").mkdir(parents=True)
        if lock:
            (tmp_path / name / "server.lock").write_text("99999\n")
        return name

    dead = folder("segearth-serve-dead1", lock=True)
    unlocked_foreign = folder("segearth-serve-nolock", lock=False)  # not made by this code
    other = folder("my-data", lock=True)
    alive = folder("segearth-serve-alive", lock=True)
    fd = os.open(tmp_path / alive / "server.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a running server holds its lock
    try:
        app = create_app(predictor, "tiny", ServeSettings(workdir=tmp_path))
        with TestClient(app, base_url=BASE):
            names = {p.name for p in tmp_path.iterdir()}
            assert dead not in names and {unlocked_foreign, other, alive, app.state.store.root.name} <= names
            lock = app.state.store.root / "server.lock"
            assert lock.read_text().strip() == str(os.getpid())
            probe = os.open(lock, os.O_RDWR)
            with pytest.raises(BlockingIOError):  # held by the running server: never removed by another
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.close(probe)
    finally:
        os.close(fd)
    assert not app.state.store.root.exists()

"""`segearth serve` under concurrent uploads: the preparation queue's 503 and the disk budget's reservations."""

from __future__ import annotations

import asyncio
import threading
import time

import segearth.serve.routes as routes_module

from test_serve import _ask, _raster, _upload, client, make_client, predictor  # noqa: F401 (fixtures)
from test_serve_limits import _image_folders


def _post(client, name: str = "naip_rgbn_2019.tif", filename: str = "x.tif"):
    """A raw-body upload with its Content-Length (what curl --data-binary sends)."""
    return client.post("/images", content=_raster(name).read_bytes(), params={"filename": filename})


def _wait_for(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert condition()


def test_full_preparation_queue_gives_503_with_retry_after_while_questions_answer(make_client):
    client = make_client(prepare_workers=1, prepare_waiting=0, prepare_timeout_s=40)
    image_id = _upload(client)["id"]
    preparing = client.app.state.preparing
    gate, original = threading.Event(), preparing._run

    def held(args):  # the first preparation holds the only slot until the gate opens
        gate.wait(30)
        return original(args)

    preparing._run = held
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("first", _post(client, filename="first.tif")))
    thread.start()
    try:
        _wait_for(lambda: preparing.outstanding == 1)
        start = time.monotonic()
        r = _post(client, filename="second.tif")
        assert r.status_code == 503 and time.monotonic() - start < 5
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["detail"].startswith("the server is busy preparing other uploads, retry in about")
        assert _ask(client, image_id, ["the roads"]).status_code == 200  # questions do not wait for uploads
    finally:
        gate.set()
        thread.join(60)
    assert outcome["first"].status_code == 201, outcome["first"].text
    names = sorted(m["filename"] for m in client.get("/images").json())
    assert names == ["first.tif", "naip_rgbn_2019.tif"]
    assert len(_image_folders(client)) == 2  # the refused upload left nothing behind


def test_concurrent_uploads_cannot_both_pass_the_disk_budget(make_client, monkeypatch):
    size = _raster("naip_rgbn_2019.tif").stat().st_size
    probe = make_client()
    _upload(probe)
    kept = probe.app.state.store.disk_used()  # the upload plus its previews and model input
    client = make_client(max_disk_mb=(kept + size / 2) / 2**20)  # room for one upload, not two
    store = client.app.state.store
    entered, gate = threading.Event(), threading.Event()
    original = routes_module.save_raw

    async def slow_save(stream, dest, limit):  # the first upload passes its check, then waits before writing
        if not entered.is_set():
            entered.set()
            await asyncio.to_thread(gate.wait, 30)
        return await original(stream, dest, limit)

    monkeypatch.setattr(routes_module, "save_raw", slow_save)
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("first", _post(client, filename="first.tif")))
    thread.start()
    try:
        assert entered.wait(10)
        assert store.disk_used() >= size  # its reservation counts though nothing is written yet
        r = _post(client, filename="second.tif")
        assert r.status_code == 409 and "work folder" in r.json()["detail"], r.text
    finally:
        gate.set()
        thread.join(60)
    assert outcome["first"].status_code == 201, outcome["first"].text
    assert [m["filename"] for m in client.get("/images").json()] == ["first.tif"]
    assert store.disk_used() <= store.max_disk_bytes and len(_image_folders(client)) == 1
    r = _post(client, filename="third.tif")  # still refused: the first upload's files fill the budget
    assert r.status_code == 409

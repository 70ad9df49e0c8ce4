"""Models by name: built-ins, folders and Hugging Face hub ids (a local fake hub; no network)."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import torch

from segearth.checkpoint import CheckpointError, load_model_and_tokenizer, save_pretrained, to_official_state_dict
from segearth.hub import ModelNotFoundError, resolve_model
from segearth.weights import builtin_model_path
from segearth.weights import resolve_model as weights_resolve_model

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny SegEarth-R1 checkpoint folder (config, safetensors, tokenizer files), and beside it
    ``tiny.bin``: the same weights as a plain-tensor pickle."""
    from segearth import SegEarthR1, small_config
    from segearth.tokenizer import byte_level_tokenizer

    torch.manual_seed(0)
    model = SegEarthR1(small_config()).eval()
    folder = tmp_path_factory.mktemp("tiny") / "ckpt"
    save_pretrained(model, folder, tokenizer=byte_level_tokenizer())
    torch.save({k: v.clone() for k, v in to_official_state_dict(model).items()}, folder.parent / "tiny.bin")
    return folder


class FakeHub:
    """The endpoints ``snapshot_download`` uses: repo info, recursive tree listing, resolve (HEAD/GET)."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self):
                hub._serve(self, body=False)

            def do_GET(self):
                hub._serve(self, body=True)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def add(self, repo: str, files: dict[str, bytes]) -> None:
        self.repos[repo] = files

    def _serve(self, req: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(req.path).path)
        self.requests.append(f"{req.command} {path}")
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"]:
            repo, files = "/".join(parts[2:4]), self.repos.get("/".join(parts[2:4]))
            if files is None:
                return self._send(req, 404, b"{}", {"X-Error-Code": "RepoNotFound"}, body)
            data: dict[str, object] | list[dict[str, object]]
            if parts[4] == "revision":
                data = {"id": repo, "sha": SHA, "siblings": [{"rfilename": f} for f in files]}
            else:  # tree
                data = [{"type": "file", "path": f, "size": len(b), "oid": _sha1(b)} for f, b in files.items()]
            return self._send(req, 200, json.dumps(data).encode(), {"Content-Type": "application/json"}, body)
        files = self.repos.get("/".join(parts[:2]))
        if files is None or parts[2] != "resolve" or "/".join(parts[4:]) not in files:
            return self._send(req, 404, b"", {"X-Error-Code": "EntryNotFound"}, body)
        content = files["/".join(parts[4:])]
        headers = {"ETag": f'"{_sha1(content)}"', "X-Repo-Commit": SHA, "Content-Type": "application/octet-stream"}
        self._send(req, 200, content, headers, body)

    @staticmethod
    def _send(req, status: int, content: bytes, headers: dict[str, str], body: bool) -> None:
        req.send_response(status)
        for k, v in {**headers, "Content-Length": str(len(content))}.items():
            req.send_header(k, v)
        req.end_headers()
        if body:
            req.wfile.write(content)


def _sha1(b: bytes) -> str:
    return hashlib.sha1(b).hexdigest()


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fake hub as HF_ENDPOINT and an empty HF_HUB_CACHE; huggingface_hub reads both at import,
    so its constants are patched as well as the environment."""
    from huggingface_hub import constants

    fake = FakeHub()
    cache = tmp_path / "hf-cache"
    for name, value in (("HF_ENDPOINT", fake.url), ("HF_HUB_CACHE", str(cache)), ("HF_HUB_OFFLINE", "0")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(constants, "ENDPOINT", fake.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", fake.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    yield fake
    fake.server.shutdown()


def _go_offline(monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def hub_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _repo_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_hub_id_downloads_only_checkpoint_files_then_works_offline(hub, tiny_checkpoint, monkeypatch):
    files = _repo_files(tiny_checkpoint)
    files["pytorch_model.bin"] = (tiny_checkpoint.parent / "tiny.bin").read_bytes()  # a pickle copy: never fetched
    files["checkpoint-100/model.safetensors"] = files["model.safetensors"]  # a subfolder: never fetched
    files["README.md"] = b"# tiny\n"
    hub.add("earth-insights/tiny", files)

    folder = resolve_model("earth-insights/tiny")
    assert folder == Path(hub_cache()) / "models--earth-insights--tiny" / "snapshots" / SHA
    got = sorted(p.name for p in folder.iterdir())
    assert "model.safetensors" in got and "config.json" in got and "tokenizer.json" in got
    assert "pytorch_model.bin" not in got and "README.md" not in got and "checkpoint-100" not in got
    fetched = [r for r in hub.requests if r.startswith("GET") and "/resolve/" in r]
    assert any(r.endswith("/model.safetensors") for r in fetched)
    assert not any(r.endswith((".bin", "README.md")) or "checkpoint-100" in r for r in fetched)
    model, tokenizer = load_model_and_tokenizer(folder)
    ref, _ = load_model_and_tokenizer(tiny_checkpoint)
    assert torch.equal(model.connector.fc.weight, ref.connector.fc.weight)
    assert tokenizer.convert_tokens_to_ids("[SEG]") == 258

    # the same id again, offline: served from the cache, nothing asked of the hub
    _go_offline(monkeypatch)
    seen = len(hub.requests)
    assert weights_resolve_model("earth-insights/tiny") == folder
    assert len(hub.requests) == seen


def test_prefilled_cache_resolves_offline_by_branch_and_commit(hub, tiny_checkpoint, monkeypatch):
    _go_offline(monkeypatch)
    repo = Path(hub_cache()) / "models--org--cached"
    shutil.copytree(tiny_checkpoint, repo / "snapshots" / SHA)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    assert resolve_model("org/cached") == repo / "snapshots" / SHA
    assert resolve_model("org/cached@" + SHA) == repo / "snapshots" / SHA
    assert resolve_model("org/cached", revision=SHA) == repo / "snapshots" / SHA
    model, _ = load_model_and_tokenizer(resolve_model("org/cached"))
    assert model.cfg.image_size == 256
    assert hub.requests == []


def test_offline_and_not_cached_is_a_one_line_error(hub, monkeypatch):
    _go_offline(monkeypatch)
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("earth-insights/SegEarth-R1-EarthReason")
    msg = str(err.value)
    assert "earth-insights/SegEarth-R1-EarthReason" in msg and "HF_HUB_OFFLINE" in msg
    assert "local checkpoint folder" in msg and "\n" not in msg
    assert hub.requests == []


def test_unknown_repository_on_the_hub(hub):
    with pytest.raises(ModelNotFoundError, match="no repository org/absent on the Hugging Face Hub"):
        resolve_model("org/absent")
    assert hub.requests  # the answer came from the (fake) hub


def test_bin_only_repository_needs_allow_bin(hub, tiny_checkpoint):
    files = {k: v for k, v in _repo_files(tiny_checkpoint).items() if k != "model.safetensors"}
    files["pytorch_model.bin"] = (tiny_checkpoint.parent / "tiny.bin").read_bytes()
    hub.add("org/old", files)

    with pytest.raises(CheckpointError, match=r"only pytorch_model\*\.bin weights .*allow_bin=True"):
        resolve_model("org/old")
    assert not any(r.endswith(".bin") for r in hub.requests)
    folder = resolve_model("org/old", allow_bin=True)
    assert (folder / "pytorch_model.bin").is_file()
    loaded, _ = load_model_and_tokenizer(folder)
    ref, _ = load_model_and_tokenizer(tiny_checkpoint)
    assert torch.equal(loaded.connector.fc.bias, ref.connector.fc.bias)


def test_existing_local_folder_wins_over_a_hub_id(hub, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_checkpoint, tmp_path / "org" / "local")
    assert resolve_model("org/local") == Path("org/local")
    assert hub.requests == []


@pytest.mark.parametrize("spec", ["./nowhere", "/no/such/folder", "a/b/c", "not an id", "org/--bad"])
def test_neither_folder_builtin_nor_hub_id(hub, spec):
    with pytest.raises(ModelNotFoundError, match="does not exist: it is not a folder, a built-in name .* or a hub id"):
        resolve_model(spec)
    assert hub.requests == []


def test_builtin_names_and_default():
    nano = builtin_model_path()
    assert resolve_model() == nano and weights_resolve_model(None) == nano
    assert resolve_model("nano") == nano and resolve_model("segearth-nano") == nano


def test_a_file_is_not_a_checkpoint_folder(tiny_checkpoint):
    with pytest.raises(ModelNotFoundError, match="a file; pass the checkpoint folder"):
        resolve_model(tiny_checkpoint / "config.json")

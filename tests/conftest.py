"""Shared test helpers: paths to ../shared, the --require-shared switch, and tiny models.

Tests that read the official fixtures or the real data of ../shared go through :func:`require_shared`
(or the ``needs_shared`` marker): locally a missing ../shared skips them; with ``--require-shared``
or in CI (``CI=true``) it fails them, so a CI without the data can never report green.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PARITY_SMALL = SHARED / "fixtures" / "official" / "parity_small"
FULL_KEYS = SHARED / "fixtures" / "official" / "full_keys.json"

_require = {"shared": False}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--require-shared", action="store_true",
                     help="fail instead of skipping tests whose ../shared fixtures or data are missing (CI)")


def pytest_configure(config: pytest.Config) -> None:
    # CI sets CI=true, so the README's own test command is strict there without a CI-only flag.
    _require["shared"] = bool(config.getoption("--require-shared")) or os.environ.get("CI") == "true"
    config.addinivalue_line("markers", "needs_shared(*paths): the test reads these paths of ../shared")
    if _require["shared"] and not SHARED.is_dir():
        pytest.exit(f"--require-shared: {SHARED} (official fixtures and real data) is missing", returncode=1)


def require_shared(path: Path) -> Path:
    """``path`` (under ../shared) if it exists; else skip the test, or fail it with --require-shared."""
    if path.exists():
        return path
    message = f"{path} not found"
    if _require["shared"]:
        pytest.fail(f"{message} (--require-shared)", pytrace=False)
    pytest.skip(message)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("needs_shared"):
        for path in marker.args:
            require_shared(Path(path))


@pytest.fixture
def parity_dir() -> Path:
    require_shared(PARITY_SMALL / "io.safetensors")
    return PARITY_SMALL


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight checkpoint folder (small config, byte-level tokenizer), as `--model` takes it."""
    from segearth import SegEarthR1, small_config
    from segearth.checkpoint import save_pretrained
    from segearth.tokenizer import byte_level_tokenizer

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt")
    save_pretrained(SegEarthR1(small_config()).eval(), folder, tokenizer=byte_level_tokenizer())
    return folder


@pytest.fixture
def small_model():
    from segearth import SegEarthR1, small_config

    torch.manual_seed(0)
    return SegEarthR1(small_config()).eval()

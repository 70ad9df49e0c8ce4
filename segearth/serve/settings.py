"""Limits and knobs of ``segearth serve``, in one place so the CLI, the app and the tests agree."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .security import DEFAULT_HOSTS


@dataclass(frozen=True)
class ServeSettings:
    """How much the server accepts and keeps.

    The defaults suit one analyst or a small team on one machine: big enough for a full
    Sentinel-2 tile, small enough that a mistaken upload cannot fill the disk or the RAM.
    """

    max_upload_mb: float = 512.0  # per uploaded raster; larger uploads get 413
    max_queue: int = 8  # requests allowed to *wait* behind the one on the model; more get 503
    request_timeout_s: float = 300.0  # waiting + running; the model is never interrupted mid-forward
    cache_mb: float = 1024.0  # memory budget for cached image features (LRU)
    max_questions: int = 16  # per request, so one request cannot hold the model for minutes
    max_question_chars: int = 1000  # checked before tokenising
    max_question_tokens: int = 512  # also capped by the model's context
    max_body_kb: int = 64  # any request body but an upload (JSON), refused before parsing
    max_answers: int = 100  # kept per image; older answers are dropped (their files removed)
    max_megapixels: float = 1500.0  # width x height of an upload, read from its header before decoding
    max_disk_mb: float = 20480.0  # everything in the work folder: uploads, previews, rendered masks
    max_images: int = 100  # uploads kept at once; the oldest is not dropped silently: 409 instead
    prepare_workers: int = 2  # uploads decoded at once, each in its own killable process
    prepare_waiting: int = 8  # uploads allowed to wait for a preparation slot; more get 503
    prepare_timeout_s: float = 120.0  # decoding an upload past this is killed: 422
    display_max: int = 2048  # long side of the preview / PNG mask / polygon grid
    workdir: Path | None = None  # parent of the temporary upload folder (default: system temp)
    allowed_hosts: tuple[str, ...] = DEFAULT_HOSTS  # Host header names answered ("*": any); see security.py
    cors_origins: tuple[str, ...] = ()  # other sites allowed to call the API from a browser
    token: str | None = field(default=None, repr=False)  # bearer token required on every data route

    def __post_init__(self) -> None:
        if self.max_upload_mb <= 0:
            raise ConfigError(f"--max-upload-mb must be positive, got {self.max_upload_mb:g}")
        if self.max_queue < 0:
            raise ConfigError(f"--max-queue must be 0 or more, got {self.max_queue}")
        if self.request_timeout_s <= 0:
            raise ConfigError(f"--timeout must be positive, got {self.request_timeout_s:g}")
        if self.cache_mb < 0:
            raise ConfigError(f"--cache-mb must be 0 or more, got {self.cache_mb:g}")
        if self.max_questions < 1 or self.max_images < 1 or self.display_max < 64:
            raise ConfigError("max_questions and max_images must be at least 1, display_max at least 64")
        if self.prepare_waiting < 0:
            raise ConfigError(f"--prepare-waiting must be 0 or more, got {self.prepare_waiting}")
        for name in ("max_question_chars", "max_question_tokens", "max_body_kb", "max_answers", "max_megapixels",
                     "max_disk_mb", "prepare_workers", "prepare_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name):g}")
        if self.token is not None and len(self.token) < 8:
            raise ConfigError("--token must be at least 8 characters long")
        if self.max_answers < self.max_questions:
            raise ConfigError(f"--max-answers ({self.max_answers}) must be at least "
                             f"--max-questions ({self.max_questions})")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1_000_000)

    @property
    def max_disk_bytes(self) -> int:
        return int(self.max_disk_mb * 1024 * 1024)

    @property
    def cache_bytes(self) -> int:
        return int(self.cache_mb * 1024 * 1024)

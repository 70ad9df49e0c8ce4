"""Limits and knobs of ``segearth serve``, in one place so the CLI, the app and the tests agree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
    max_images: int = 100  # uploads kept at once; the oldest is not dropped silently: 507 instead
    display_max: int = 2048  # long side of the preview / PNG mask / polygon grid
    workdir: Path | None = None  # parent of the temporary upload folder (default: system temp)

    def __post_init__(self) -> None:
        if self.max_upload_mb <= 0:
            raise ValueError(f"--max-upload-mb must be positive, got {self.max_upload_mb:g}")
        if self.max_queue < 0:
            raise ValueError(f"--max-queue must be 0 or more, got {self.max_queue}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"--timeout must be positive, got {self.request_timeout_s:g}")
        if self.cache_mb < 0:
            raise ValueError(f"--cache-mb must be 0 or more, got {self.cache_mb:g}")
        if self.max_questions < 1 or self.max_images < 1 or self.display_max < 64:
            raise ValueError("max_questions and max_images must be at least 1, display_max at least 64")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def cache_bytes(self) -> int:
        return int(self.cache_mb * 1024 * 1024)

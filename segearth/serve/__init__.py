"""``segearth serve``: a REST API and an offline web page around one loaded SegEarth-R1 model.

:func:`create_app` builds the FastAPI app from a :class:`~segearth.predictor.Predictor`;
:func:`segearth.serve.command.serve` is the command that loads a checkpoint and runs it with uvicorn.
The app is imported lazily: the command line imports this package to register ``serve`` and must
not pay for FastAPI and the model code to print ``--help``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "ServeSettings":
        from .settings import ServeSettings

        return ServeSettings
    raise AttributeError(f"module 'segearth.serve' has no attribute {name!r}")

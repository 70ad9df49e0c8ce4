"""``segearth serve``: a REST API and an offline web page around one loaded SegEarth-R1 model.

:func:`create_app` builds the FastAPI app from a :class:`~segearth.predictor.Predictor`;
:func:`segearth.serve.command.serve` is the command that loads a checkpoint and runs it with uvicorn.
"""

from .app import create_app
from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]

"""``python -m segearth.train`` (what ``accelerate launch -m segearth.train`` runs on every process)."""

import typer

from .command import train

if __name__ == "__main__":
    typer.run(train)

"""``python -m segearth``: the same command line as the ``segearth`` script."""

from segearth.cli import main

main()

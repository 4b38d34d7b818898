"""`python -m irtools` runs the command line."""

from irtools.cli import run

run()

"""`python -m irtools` runs the command line."""

from irtools.cli import main

main(prog_name="irtools")

"""`python -m grufinity ...`: the same CLI as the `grufinity` command."""

from grufinity.cli import main

main(prog_name="grufinity")

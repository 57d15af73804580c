"""`python -m clnet`: the `clnet` command group (clnet/commands.py)."""

from .commands import main

main()

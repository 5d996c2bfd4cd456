"""`python -m edgeclip` runs the command line."""

from edgeclip.cli import main

main()

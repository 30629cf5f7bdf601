"""`python -m livecdn ...`: the same as the `livecdn` command."""

from livecdn.cli import main

main()

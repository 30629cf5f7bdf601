import sys

from common.cli import main

main(["origin", *sys.argv[1:]])

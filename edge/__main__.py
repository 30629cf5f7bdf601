import sys

from common.cli import main

main(["edge", *sys.argv[1:]])

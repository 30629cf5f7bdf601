import sys

from common.cli import main

main(["control", *sys.argv[1:]])

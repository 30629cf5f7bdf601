from common.cli import main

main(["origin", *__import__("sys").argv[1:]])

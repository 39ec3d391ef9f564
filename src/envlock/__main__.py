"""python -m envlock: the same CLI as the envlock command (what a batch job runs on its node)."""

from envlock.cli.app import main

main()

"""``python -m oncolens`` (how torchrun starts each rank)."""

from oncolens.apps.cli import main

main()

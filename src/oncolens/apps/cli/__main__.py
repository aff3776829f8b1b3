"""``python -m oncolens.apps.cli``: the ``oncolens`` command."""

from . import main

main()

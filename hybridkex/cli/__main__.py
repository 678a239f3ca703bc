"""``python -m hybridkex.cli`` runs the command line."""

from . import main

main()

"""``python -m hybridkex`` runs the command line."""

from .cli import main

main()

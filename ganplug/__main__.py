"""``python -m ganplug`` runs the command line."""

from ganplug.cli import main

main()

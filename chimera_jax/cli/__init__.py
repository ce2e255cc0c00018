"""The command-line programs: one module per command, each with ``main(argv)``; ``entry.launch`` runs them."""

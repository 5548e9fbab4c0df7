"""One module per CLI subcommand: ``add(subparsers)`` and ``run(args) -> exit code``."""

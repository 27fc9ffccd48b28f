"""CLI subcommands; each module: HELP, add_arguments(parser), run(args) -> int. Discovered by leapalign.cli."""

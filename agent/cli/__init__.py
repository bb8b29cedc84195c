"""The `modelarts-agent` command line: one module per subcommand."""

"""The `fragment-llm` command: one module per subcommand, its arguments beside its handler."""

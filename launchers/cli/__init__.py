"""The `launch` command line: the run command and dispatch (`main`), and one module per group of subcommands."""

"""Command-line interface: argument parsing, output formats, exit codes."""

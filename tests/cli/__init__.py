"""CLI tests: one file per command, its flows and its exact messages."""

"""Unit tests: one room of heartcli each (the CLI only incidentally), a file per room."""

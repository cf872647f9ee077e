"""The command-line layer: parse, load config, call a service, render. Nothing else."""

"""System tests: whole processes, signals, a Ray cluster, threads, a full disk (slow)."""

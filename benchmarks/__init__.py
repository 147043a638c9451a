"""Speed and memory figures (run as ``python -m benchmarks.<name>`` from the repository root)."""

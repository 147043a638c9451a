"""Scientific experiments: what a change does to accuracy and render quality (run as
``python -m experiments.<name>`` from the repository root; speed and memory figures are in ``benchmarks``)."""

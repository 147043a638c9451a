"""Command-line tools for data preparation, training and evaluation (``python training/<name>.py`` or
``python -m training.<name>``; both need the project installed, as ``make env`` does)."""

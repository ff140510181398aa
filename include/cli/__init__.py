"""The ``xac`` command line (``python -m include.cli``)."""

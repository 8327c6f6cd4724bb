"""Command-line interface (imports only :mod:`bayestensor.experiments`)."""

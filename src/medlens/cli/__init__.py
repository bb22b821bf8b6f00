"""The ``medlens`` command: one module per command group; each command parses, calls the library, prints."""

from medlens.cli.app import app

__all__ = ["app"]

"""The ``lore`` command: one module per command group, each a thin layer over the library."""

from lore_rm.cli.main import app, main

__all__ = ["app", "main"]

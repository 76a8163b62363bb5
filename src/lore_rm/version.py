"""The lore-rm version (also the distribution's version; recorded in saved artefacts)."""

__version__ = "0.1.0"

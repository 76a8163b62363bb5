"""Kept for compatibility: :func:`load_split` lives in :mod:`lore_rm.embed.split`."""

from lore_rm.embed.split import load_split

__all__ = ["load_split"]

"""A content fingerprint of a transformers backbone's files, recorded with its embeddings.

Two checkpoints of the same architecture and width (a base model and its fine-tune, two
random initialisations) have the same ``config.json`` and weight-file sizes but give other
embeddings; the fingerprint tells them apart. It reads the files, not the loaded tensors, so
it is the same whatever compute dtype or device the backbone is loaded with, and whatever
folder (or Hub cache snapshot) holds them.

``sha256`` over ``config.json`` and each weight file (``*.safetensors``, else ``*.bin``), in
name order: a file of at most :data:`WHOLE_FILE_BYTES` is hashed whole; a larger one by its
size, its first :data:`SLICE_BYTES` (the safetensors header: every tensor's name, dtype,
shape and offset) and :data:`N_SLICES` evenly spaced slices of that length -- about 70 MiB
read for an 8B model, whose weights change everywhere when it is fine-tuned.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

WHOLE_FILE_BYTES = 64 << 20
SLICE_BYTES = 1 << 20
N_SLICES = 16


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files: ``*.safetensors``, else ``*.bin``, in name order."""
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))


def _file_digest(h: Any, path: Path) -> None:
    size = path.stat().st_size
    h.update(f"{size}\0".encode())
    with path.open("rb") as f:
        if size <= WHOLE_FILE_BYTES:
            for block in iter(lambda: f.read(SLICE_BYTES), b""):
                h.update(block)
            return
        step = (size - SLICE_BYTES) // N_SLICES
        for offset in [0, *(step * (i + 1) for i in range(N_SLICES))]:
            f.seek(offset)
            h.update(f.read(SLICE_BYTES))


def folder_fingerprint(folder: str | Path) -> str | None:
    """The fingerprint of the checkpoint in ``folder`` (``sha256:`` + hex), or None when it
    has no ``config.json`` or no weight file."""
    folder = Path(folder)
    config, weights = folder / "config.json", weight_files(folder)
    if not config.is_file() or not weights:
        return None
    h = hashlib.sha256(config.read_bytes())
    for path in weights:
        _file_digest(h, path)
    return "sha256:" + h.hexdigest()


def backbone_fingerprint(path: str, revision: str | None = None) -> str | None:
    """The fingerprint of backbone ``path``: a local folder, or a Hub id whose files are in
    the local Hugging Face cache (None when they cannot be found without a download)."""
    if Path(path).is_dir():
        return folder_fingerprint(path)
    try:
        from transformers.utils import cached_file

        config = cached_file(
            path,
            "config.json",
            revision=revision,
            local_files_only=True,
            _raise_exceptions_for_missing_entries=False,
        )
    except (OSError, ValueError, ImportError):
        return None
    return folder_fingerprint(Path(config).parent) if config else None

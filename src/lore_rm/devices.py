"""Turning a device name from the command line or the API into a usable torch device.

Every failure is one :class:`~lore_rm.errors.LoreError` line that says what to pass instead,
never a torch traceback from deep inside a fit or a forward pass.
"""

from __future__ import annotations

import os

import torch

from lore_rm.errors import LoreError

CHOICES = "cpu, cuda, cuda:N, mps or auto"


def as_device(device: str | torch.device | None) -> torch.device:
    """The torch device ``device`` names, checked to exist on this machine.

    ``None`` / ``"auto"``: this process's GPU (``LOCAL_RANK`` under torchrun) or the CPU.
    """
    if device is None or str(device).strip().lower() == "auto":
        if torch.cuda.is_available():
            return as_device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
        return torch.device("cpu")
    try:
        dev = device if isinstance(device, torch.device) else torch.device(str(device).strip())
    except (RuntimeError, ValueError):
        raise LoreError(f"unknown device {str(device)!r}: use {CHOICES}") from None
    if dev.type == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            raise LoreError(
                f"device {str(device)!r}: this PyTorch build ({torch.__version__}) has no GPU "
                "support; use --device cpu, or install a CUDA build of torch"
            )
        count = torch.cuda.device_count()
        if count == 0:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
            raise LoreError(f"device {str(device)!r}: no CUDA GPU is visible{hint}; use cpu")
        if dev.index is not None and dev.index >= count:
            raise LoreError(
                f"device {str(device)!r}: this machine has {count} CUDA GPU(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise LoreError(f"device {str(device)!r}: MPS is not available here; use cpu")
    return dev

"""The two passes over an embedding table, ``table @ V`` and ``table.T @ h``.

A float32 table (with a float32 V) is one GEMM each, writing a preallocated output (addmm
into a (K, d) accumulator for the transpose). A table stored in a lower precision
(bfloat16, float16), read in another compute dtype, or with a separate ``offset`` (its mean
row, kept apart instead of centring the stored rows) is upcast block by block into a
cache-sized buffer of the compute dtype: float32 accumulation on the stored values, and never
a whole-table copy. bench/table_passes.py measures these against row-blocked float32 passes
and torch's own bf16 GEMM (which rounds V, h and the output to bf16: about twice the error of
storing the table in bf16).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from lore_rm.threads import one_thread

Tensor = torch.Tensor

LOW_PRECISION = (torch.bfloat16, torch.float16)
BLOCK_BYTES = 4 << 20  # float32 rows per block: 256 at d = 4096 (bench/table_passes.py)
GPU_BLOCK_BYTES = 128 << 20  # on a GPU, blocks only bound the upcast buffer
WIDE_ROW = 2048  # float32 columns from which table_times works in row blocks on the CPU
PRODUCT_BLOCK_BYTES = 1 << 20


def block_rows(d: int, device: torch.device) -> int:
    size = BLOCK_BYTES if device.type == "cpu" else GPU_BLOCK_BYTES
    return max(1, size // (4 * max(d, 1)))


def _blocked(table: Tensor, dtype: torch.dtype, offset: Tensor | None) -> bool:
    return table.dtype != dtype or offset is not None


def blocks(table: Tensor, dtype: torch.dtype, offset: Tensor | None = None) -> Iterator[Tensor]:
    """Row blocks of ``table - offset`` in ``dtype``: the table itself (one GEMM, the fastest
    form for a table that needs no conversion) or cache-sized upcast copies."""
    if not _blocked(table, dtype, offset):
        yield table
        return
    rows = block_rows(table.shape[1], table.device)
    buf = torch.empty(min(rows, table.shape[0]), table.shape[1], dtype=dtype, device=table.device)
    for start in range(0, table.shape[0], rows):
        part = table[start : start + rows]
        out = buf[: part.shape[0]]
        out.copy_(part)
        if offset is not None:
            out -= offset
        yield out


def table_times(table: Tensor, weight: Tensor, offset: Tensor | None = None) -> Tensor:
    """``(table - offset) @ weight.T`` (T x K) for a (K, d) ``weight``, in weight's dtype.

    A float32 table on the CPU is ``weight @ table.T`` (its (T, K) transpose returned as a
    view; in 1 MB row blocks from ``WIDE_ROW`` columns): in MKL's strict reproducible mode
    (``lore_rm.reproducible_blas``) that orientation of the skinny product took 0.5-0.95 of
    the time of ``table @ weight.T`` and, at d = 4096, the blocks 0.65-0.8 of the one
    product's, the same bits (docs/measurements.md, sixth pass)."""
    if table.device.type == "cpu" and not _blocked(table, weight.dtype, offset):
        if table.shape[1] < WIDE_ROW:
            return torch.mm(weight, table.T).T
        out = torch.empty(table.shape[0], weight.shape[0], dtype=weight.dtype)
        rows = max(1, PRODUCT_BLOCK_BYTES // (4 * table.shape[1]))
        for start in range(0, table.shape[0], rows):
            out[start : start + rows] = torch.mm(weight, table[start : start + rows].T).T
        return out
    out = torch.empty(table.shape[0], weight.shape[0], dtype=weight.dtype, device=weight.device)
    start = 0
    with one_thread(table.device, _blocked(table, weight.dtype, offset)):
        for block in blocks(table, weight.dtype, offset):
            torch.mm(block, weight.T, out=out[start : start + block.shape[0]])
            start += block.shape[0]
    return out


def table_transpose_times(table: Tensor, h: Tensor, offset: Tensor | None = None) -> Tensor:
    """``(table - offset).T @ h`` (d x K) for an (T, K) ``h``, in h's dtype."""
    acc = torch.zeros(h.shape[1], table.shape[1], dtype=h.dtype, device=h.device)
    start = 0
    with one_thread(table.device, _blocked(table, h.dtype, offset)):
        for block in blocks(table, h.dtype, offset):
            acc.addmm_(h[start : start + block.shape[0]].T, block)
            start += block.shape[0]
    return acc.T


def mean_row(table: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """The mean row (d,) summed block by block in ``dtype`` (no whole-table upcast)."""
    total = torch.zeros(table.shape[1], dtype=torch.float64, device=table.device)
    for block in blocks(table, dtype):
        total += block.sum(0, dtype=torch.float64)
    return (total / max(table.shape[0], 1)).to(dtype)

"""The two table passes of one objective evaluation, variant by variant, against the floor.

One evaluation is ``X @ V`` (project: ``table @ V`` then chosen - rejected) plus ``X.T @ G``
(backproject: scatter G into a (T, K) h, then ``table.T @ h``), at PersonalLLM size: a random
(83k, d) table, 47k pairs, K = 5, d = 4096 and 1024. Variants (forward / backward):

  today        F.linear(table, V.T); (h.T @ table).T                 (the library before)
  mm           table @ V;            table.T @ h                     (one GEMM each, no copies)
  blocked B    the same over row blocks of B rows, addmm_ into a preallocated output
  bf16/fp16 B  the table stored in bf16 (fp16); each row block upcast into a float32 buffer
               (B x d, cache sized) and multiplied there: float32 accumulation
  bf16 library lore_rm.table_passes on the bf16 table (256-row blocks, the loop on 1 thread)
  bf16 native  torch's bf16 GEMM (V and h rounded to bf16, bf16 output): accuracy check only

Printed per variant: forward, backward and evaluation ms (median of --repeat, the variants
interleaved in each repeat), the evaluation's ratio to the float32 floor (2 x float32 table
bytes / copy bandwidth) and to the variant's own floor (2 x its stored bytes / bandwidth),
and the max error of X @ V and X.T @ G against float64 on the float32 table, relative to the
largest entry (for bf16/fp16 that includes rounding the table itself).

    python bench/table_passes.py                       # d = 4096 and 1024, 1 and 2 threads
    python bench/table_passes.py --d 4096 --threads 1

Measured (2-core AMD EPYC with avx512_bf16, load average 3.9-5.2 from another session, copy
bandwidth 12.1 GB/s; docs/measurements.md, "Scale", has the table), eval ms on 1 / 2 threads:
float32 one GEMM each 440 / 906 (1.95x the float32 floor on 1 thread; the library's form),
float32 256-row blocks 488 / 5212, bf16 256-row blocks upcast to float32 401 / 16502 (1.78x
the float32 floor, error 1.5e-3: bf16's own rounding), torch's bf16 GEMM 208 / 449 (error
3.4e-3). bf16 storage halves memory, not time; the library keeps float32 accumulation.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

TEXTS = 83_000
PAIRS = 47_000
RANK = 5


def copy_bandwidth(mib: int = 512) -> float:
    x, y = torch.ones(mib << 18), torch.zeros(mib << 18)
    y.copy_(x)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        y.copy_(x)
        times.append(time.perf_counter() - t0)
    return x.numel() * 4 / statistics.median(times)


def scatter(g: torch.Tensor, c: torch.Tensor, r: torch.Tensor, texts: int) -> torch.Tensor:
    h = torch.zeros(texts, g.shape[1], dtype=g.dtype)
    h.index_add_(0, c, g)
    h.index_add_(0, r, -g)
    return h


def today(table, c, r):
    def fwd(v):
        p = F.linear(table, v.T.contiguous())
        return p[c] - p[r]

    def bwd(g):
        return (scatter(g, c, r, table.shape[0]).T @ table).T

    return fwd, bwd


def mm(table, c, r):
    def fwd(v):
        p = table @ v
        return p[c] - p[r]

    def bwd(g):
        return table.T @ scatter(g, c, r, table.shape[0])

    return fwd, bwd


def blocked(table, c, r, rows: int):
    """Row blocks; a low-precision table is upcast block by block into a float32 buffer."""
    upcast = table.dtype != torch.float32
    buf = torch.empty(rows, table.shape[1]) if upcast else None

    def block(start: int) -> torch.Tensor:
        part = table[start : start + rows]
        if buf is None:
            return part
        out = buf[: part.shape[0]]
        out.copy_(part)
        return out

    def fwd(v):
        p = torch.empty(table.shape[0], v.shape[1])
        weight = v.T.contiguous()
        for s in range(0, table.shape[0], rows):
            b = block(s)
            torch.mm(b, weight.T, out=p[s : s + b.shape[0]])
        return p[c] - p[r]

    def bwd(g):
        h = scatter(g, c, r, table.shape[0])
        out = torch.zeros(g.shape[1], table.shape[1])
        for s in range(0, table.shape[0], rows):
            b = block(s)
            out.addmm_(h[s : s + b.shape[0]].T, b)
        return out.T

    return fwd, bwd


def library(table, c, r):
    """lore_rm.table_passes as the library runs them (a blocked loop on one torch thread)."""
    from lore_rm.table_passes import table_times, table_transpose_times

    def fwd(v):
        p = table_times(table, v.T.contiguous())
        return p[c] - p[r]

    def bwd(g):
        return table_transpose_times(table, scatter(g, c, r, table.shape[0]))

    return fwd, bwd


def native(table, c, r):
    def fwd(v):
        p = F.linear(table, v.T.contiguous().to(table.dtype)).float()
        return p[c] - p[r]

    def bwd(g):
        h = scatter(g, c, r, table.shape[0]).to(table.dtype)
        return (h.T @ table).T.float()

    return fwd, bwd


def reference(table, c, r, v, g, rows: int = 4096):
    p = torch.empty(table.shape[0], v.shape[1], dtype=torch.float64)
    h = scatter(g.double(), c, r, table.shape[0])
    out = torch.zeros(table.shape[1], v.shape[1], dtype=torch.float64)
    for s in range(0, table.shape[0], rows):
        b = table[s : s + rows].double()
        p[s : s + rows] = b @ v.double()
        out += b.T @ h[s : s + rows]
    return p[c] - p[r], out


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref).abs().max() / ref.abs().max())


def run(d: int, threads: int, repeat: int, bandwidth: float, with_mm: bool) -> None:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(TEXTS, d, generator=gen)
    c = torch.randint(0, TEXTS, (PAIRS,), generator=gen)
    r = torch.randint(0, TEXTS, (PAIRS,), generator=gen)
    v = torch.randn(d, RANK, generator=gen) / d**0.5
    g = torch.randn(PAIRS, RANK, generator=gen)
    bf16, fp16 = table.to(torch.bfloat16), table.to(torch.float16)
    z_ref, x_ref = reference(table, c, r, v, g)
    variants = {
        "today": today(table, c, r),
        "blocked 256": blocked(table, c, r, 256),
        "blocked 2048": blocked(table, c, r, 2048),
        "bf16 256": blocked(bf16, c, r, 256),
        "bf16 1024": blocked(bf16, c, r, 1024),
        "bf16 2048": blocked(bf16, c, r, 2048),
        "fp16 256": blocked(fp16, c, r, 256),
        "bf16 library": library(bf16, c, r),
        "bf16 native": native(bf16, c, r),
    }
    if with_mm:
        variants["mm"] = mm(table, c, r)
    stored = {k: (2 if k.startswith(("bf16", "fp16")) else 4) for k in variants}
    times: dict[str, list[list[float]]] = {k: [[], [], []] for k in variants}
    for _ in range(repeat):
        for name, (fwd, bwd) in variants.items():
            t0 = time.perf_counter()
            fwd(v)
            t1 = time.perf_counter()
            bwd(g)
            t2 = time.perf_counter()
            bwd(fwd(v) + g)
            t3 = time.perf_counter()
            for slot, dt in zip(times[name], (t1 - t0, t2 - t1, t3 - t2), strict=True):
                slot.append(dt)
    floor32 = 2 * TEXTS * d * 4 / bandwidth
    print(
        f"\nd = {d}, {threads} thread(s), load {os.getloadavg()[0]:.2f}; float32 floor "
        f"{floor32 * 1e3:.1f} ms, bf16 floor {floor32 / 2 * 1e3:.1f} ms"
    )
    print(
        f"{'variant':<13} {'fwd ms':>7} {'bwd ms':>7} {'eval ms':>8} {'/fp32 floor':>11} "
        f"{'/own floor':>10} {'err X@V':>9} {'err X.T@G':>9}"
    )
    for name, (fwd, bwd) in variants.items():
        f, b, e = (statistics.median(s) for s in times[name])
        own = floor32 * stored[name] / 4
        print(
            f"{name:<13} {f * 1e3:>7.1f} {b * 1e3:>7.1f} {e * 1e3:>8.1f} {e / floor32:>10.2f}x "
            f"{e / own:>9.2f}x {rel_err(fwd(v), z_ref):>9.1e} {rel_err(bwd(g), x_ref):>9.1e}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d", type=int, nargs="+", default=[4096, 1024])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--mm", action="store_true", help="also time the plain mm forms (slow)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s (1 thread), load {os.getloadavg()[0]:.2f}")
    for d in args.d:
        for threads in args.threads:
            run(d, threads, args.repeat, bandwidth, args.mm)


if __name__ == "__main__":
    main()

"""Sets of pairwise comparisons and the two linear maps the fit needs.

A comparison by user ``u`` says that response ``c`` was preferred to ``r``. Its feature is
``x = e(c) - e(r)``. Two storage forms give the same maths:

* dense features ``X`` (N x d), one row per comparison;
* an embedding table ``E`` (T x d) of unique texts with ``chosen`` / ``rejected`` row indices,
  so ``x`` is never materialised: ``X @ V = (E @ V)[chosen] - (E @ V)[rejected]`` and
  ``X.T @ G = E.T @ (scatter(G, chosen) - scatter(G, rejected))``.

Everything the fit and the evaluation do goes through :meth:`Comparisons.project` and
:meth:`Comparisons.backproject`, so both forms cost O(rows * d * K) per step.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lore_rm.errors import DataError
from lore_rm.table_passes import LOW_PRECISION, mean_row, table_times, table_transpose_times

Tensor = torch.Tensor


class _Project(torch.autograd.Function):
    """``X @ V`` whose backward computes ``X.T @ G`` as ``(G.T @ X).T``.

    Autograd's own backward of ``X @ V`` runs ``X.T @ G``, which reads X column by column:
    measured 2-7x slower than ``(G.T @ X).T`` on CPU (bench/fit_speed.py's floor).
    """

    @staticmethod
    def forward(ctx, basis: Tensor, data: Comparisons) -> Tensor:
        ctx.data = data
        with torch.no_grad():
            return data._project(basis)

    @staticmethod
    def backward(ctx, grad: Tensor):
        with torch.no_grad():
            return ctx.data.backproject(grad.contiguous()), None


_PROJECTED: dict[int, tuple[weakref.ref, tuple, Tensor]] = {}
_PROJECTED_KEEP = 4
_PROJECTED_LOCK = threading.Lock()
MOMENT_BATCH_BYTES = 128 << 20


def _projected_table(table: Tensor, basis: Tensor, offset: Tensor | None = None) -> Tensor:
    """``(table - offset) @ basis`` (T x K), reused while the table and the basis are unchanged."""
    b = basis.detach().contiguous()
    # an inference tensor (a backbone's embed output) has no version counter; it can change
    # only inside inference_mode, which no scoring path enters
    key = (
        -1 if table.is_inference() else table._version,
        None if offset is None else hashlib.sha1(offset.cpu().numpy().tobytes()).digest(),
        b.dtype,
        tuple(b.shape),
        hashlib.sha1(b.cpu().numpy().tobytes()).digest(),
    )
    with _PROJECTED_LOCK:
        hit = _PROJECTED.get(id(table))
    if hit is not None and hit[0]() is table and hit[1] == key:
        return hit[2]
    p = table_times(table, b.T.contiguous(), offset)
    with _PROJECTED_LOCK:
        for stale in [k for k, v in _PROJECTED.items() if v[0]() is None]:
            del _PROJECTED[stale]
        while len(_PROJECTED) >= _PROJECTED_KEEP:
            del _PROJECTED[next(iter(_PROJECTED))]
        _PROJECTED[id(table)] = (weakref.ref(table), key, p)
    return p


def factorize_users(users: Sequence | np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Map user ids (any hashable printed as str) to indices into a sorted list of ids.

    String ids are hashed by Arrow's dictionary encoding (about 3x faster than sorting
    every label at 1.5M rows); other ids go through ``str`` first.
    """
    import pyarrow as pa

    if len(users) == 0:
        return np.zeros(0, dtype=np.int64), []
    try:
        arr = pa.array(users)
    except (pa.ArrowException, TypeError, ValueError):
        arr = None
    if arr is None or arr.null_count or not pa.types.is_string(arr.type):
        arr = pa.array([str(u) for u in users], type=pa.string())
    encoded = arr.dictionary_encode()
    names = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    order = np.argsort(names, kind="stable")  # str comparison (astype(str) drops trailing NULs)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    index = rank[encoded.indices.to_numpy(zero_copy_only=False)].astype(np.int64)
    return index, [str(u) for u in names[order]]


def _as_float_tensor(a, name: str) -> Tensor:
    t = torch.as_tensor(a)
    if t.ndim != 2:
        raise DataError(f"{name} must be a 2-D array (rows x d), got shape {tuple(t.shape)}")
    if not (t.is_floating_point()):
        t = t.to(torch.float32)
    return t


def finite_rows(t: Tensor, block: int = 8192) -> Tensor:
    """Which rows (bool, on the CPU) of ``t`` are finite, block by block: no copy of ``t``
    and no mask of its size (a full-size check cost 2.2 GiB at PersonalLLM size)."""
    out = torch.empty(t.shape[0], dtype=torch.bool)
    for start in range(0, t.shape[0], block):
        out[start : start + block] = torch.isfinite(t[start : start + block]).all(dim=1).cpu()
    return out


def _check_finite(t: Tensor, name: str) -> None:
    bad = ~torch.isfinite(t)
    if bad.any():
        rows = bad.any(dim=1).nonzero().flatten()
        raise DataError(
            f"{name} holds NaN or inf in {rows.numel()} row(s); first bad row: {int(rows[0])}"
        )


@dataclass(frozen=True)
class DenseRows:
    """Dense storage: one feature row ``x = e(chosen) - e(rejected)`` per comparison."""

    features: Tensor  # (N, d)

    @property
    def d(self) -> int:
        return int(self.features.shape[1])

    def project(self, weight: Tensor) -> Tensor:
        """``X @ weight.T`` for a contiguous (K, d) ``weight`` (on the CPU as
        :func:`lore_rm.table_passes.table_times` computes it)."""
        x = self.features.to(weight.dtype)
        if x.device.type == "cpu":
            return table_times(x, weight).contiguous()
        return F.linear(x, weight)

    def backproject(self, grad: Tensor) -> Tensor:
        return (grad.T @ self.features.to(grad.dtype)).T

    def feature_rows(self, start: int, stop: int, dtype: torch.dtype) -> Tensor:
        return self.features[start:stop].to(dtype)

    def subset(self, rows: Tensor) -> DenseRows:
        return DenseRows(self.features[rows])

    def to(self, device, dtype, keep_low_precision: bool) -> DenseRows:
        return DenseRows(_moved(self.features, device, dtype, keep_low_precision))


@dataclass(frozen=True)
class TableRows:
    """Table storage: an embedding table ``E`` (T, d) of unique texts and each comparison's
    ``chosen`` / ``rejected`` row; ``offset`` (d,) float32, when set, is subtracted from every
    table row as it is read (the centring of a low-precision table, kept apart; x is
    unchanged by it)."""

    table: Tensor  # (T, d), float32, bfloat16 or float16
    chosen: Tensor  # (N,) int64 rows of table
    rejected: Tensor
    offset: Tensor | None = None

    @property
    def d(self) -> int:
        return int(self.table.shape[1])

    def project(self, weight: Tensor) -> Tensor:
        p = table_times(self.table, weight, self.offset)
        return p[self.chosen] - p[self.rejected]

    def project_for_scoring(self, basis: Tensor) -> Tensor:
        """``X @ basis``, the table's projection kept for the next call (no gradient)."""
        with torch.no_grad():
            p = _projected_table(self.table, basis, self.offset)
        return p[self.chosen] - p[self.rejected]

    def backproject(self, grad: Tensor) -> Tensor:
        h = torch.zeros(self.table.shape[0], grad.shape[1], dtype=grad.dtype, device=grad.device)
        h.index_add_(0, self.chosen, grad)
        h.index_add_(0, self.rejected, -grad)
        return table_transpose_times(self.table, h, self.offset)

    def feature_rows(self, start: int, stop: int, dtype: torch.dtype) -> Tensor:
        chosen = self.table[self.chosen[start:stop]]
        rejected = self.table[self.rejected[start:stop]]
        if self.table.dtype == torch.float32:  # subtracted in float32, as the fit always has
            return (chosen - rejected).to(dtype)
        return chosen.to(dtype) - rejected.to(dtype)  # a low-precision table: no second rounding

    def subset(self, rows: Tensor) -> TableRows:
        return TableRows(self.table, self.chosen[rows], self.rejected[rows], self.offset)

    def to(self, device, dtype, keep_low_precision: bool) -> TableRows:
        return TableRows(
            _moved(self.table, device, dtype, keep_low_precision),
            self.chosen.to(device=device),
            self.rejected.to(device=device),
            None if self.offset is None else self.offset.to(device),
        )

    def pair_ids(self) -> Tensor:
        low = torch.minimum(self.chosen, self.rejected).to(torch.int64)
        high = torch.maximum(self.chosen, self.rejected).to(torch.int64)
        return torch.unique(low * int(self.table.shape[0]) + high, return_inverse=True)[1]

    def compact(self, centre: bool) -> TableRows:
        """The rows no comparison uses dropped (see :meth:`Comparisons.compact`)."""
        used, inv = torch.unique(torch.cat([self.chosen, self.rejected]), return_inverse=True)
        n = int(self.chosen.numel())
        low = self.table.dtype in LOW_PRECISION
        if used.numel() == self.table.shape[0] and (low or not centre):
            table, chosen, rejected = self.table, self.chosen, self.rejected
        else:
            table, chosen, rejected = self.table[used], inv[:n], inv[n:]
        offset = self.offset
        if centre and table.shape[0]:
            if low:
                mean = mean_row(table)
                offset = mean if offset is None else mean + offset
            else:
                table -= table.mean(dim=0, keepdim=True)
        return TableRows(table, chosen, rejected, offset)


Storage = DenseRows | TableRows


def _moved(t: Tensor, device, dtype, keep_low_precision: bool) -> Tensor:
    keep = keep_low_precision and t.dtype in LOW_PRECISION
    return t.to(device=device, dtype=None if keep else dtype)


@dataclass(frozen=True)
class Comparisons:
    """N comparisons: a user index per row plus their rows, in one of two storages behind
    one interface (:class:`DenseRows`: features; :class:`TableRows`: a table and indices).

    Build with :meth:`from_features` or :meth:`from_pairs`; do not call the constructor.
    ``user_ids[user_index[n]]`` is the id of the user who made comparison ``n``.
    """

    user_index: Tensor  # (N,) int64
    user_ids: tuple[str, ...]
    rows: Storage

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_features(
        cls, features, users: Sequence, *, user_ids: Sequence[str] | None = None
    ) -> Comparisons:
        """Dense form: ``features[n] = e(chosen_n) - e(rejected_n)``, ``users[n]`` its user id.

        ``users`` may also be integer indices into ``user_ids`` when ``user_ids`` is given.
        """
        x = _as_float_tensor(features, "features")
        index, ids = _resolve_users(users, user_ids, x.shape[0])
        _check_finite(x, "features")
        return cls(index, ids, DenseRows(x))

    @classmethod
    def from_pairs(
        cls,
        table,
        chosen,
        rejected,
        users: Sequence,
        *,
        user_ids: Sequence[str] | None = None,
        check_finite: bool = True,
    ) -> Comparisons:
        """Table form: ``table`` holds one embedding per unique text; ``chosen``/``rejected``
        are row indices into it. A floating table keeps its dtype (a bfloat16 table is
        projected block by block with float32 accumulation, never upcast whole)."""
        e = _as_float_tensor(table, "embedding table")
        c = torch.as_tensor(np.asarray(chosen), dtype=torch.int64).flatten()
        r = torch.as_tensor(np.asarray(rejected), dtype=torch.int64).flatten()
        if c.shape != r.shape:
            raise DataError(f"chosen has {c.numel()} rows but rejected has {r.numel()}")
        for name, idx in (("chosen", c), ("rejected", r)):
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= e.shape[0]):
                bad = int(((idx < 0) | (idx >= e.shape[0])).nonzero()[0])
                raise DataError(
                    f"{name}[{bad}] = {int(idx[bad])} is outside the embedding table "
                    f"(0..{e.shape[0] - 1})"
                )
        index, ids = _resolve_users(users, user_ids, c.numel())
        if check_finite and c.numel():
            finite = finite_rows(e)
            used = torch.zeros(e.shape[0], dtype=torch.bool)
            used[c.cpu()] = True
            used[r.cpu()] = True
            bad_rows = (used & ~finite).nonzero().flatten()
            if bad_rows.numel():
                raise DataError(
                    f"embedding table row {int(bad_rows[0])} (used by a comparison) holds NaN "
                    "or inf"
                )
        return cls(index, ids, TableRows(e, c, r))

    # ---- the storage's arrays, None where the other storage holds them ------------------------
    @property
    def features(self) -> Tensor | None:
        return self.rows.features if isinstance(self.rows, DenseRows) else None

    @property
    def table(self) -> Tensor | None:
        return self.rows.table if isinstance(self.rows, TableRows) else None

    @property
    def chosen(self) -> Tensor | None:
        return self.rows.chosen if isinstance(self.rows, TableRows) else None

    @property
    def rejected(self) -> Tensor | None:
        return self.rows.rejected if isinstance(self.rows, TableRows) else None

    @property
    def table_offset(self) -> Tensor | None:
        return self.rows.offset if isinstance(self.rows, TableRows) else None

    # ---- shape ----------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return int(self.user_index.numel())

    def __len__(self) -> int:
        return self.n

    @property
    def d(self) -> int:
        return self.rows.d

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def device(self) -> torch.device:
        return self.user_index.device

    @property
    def is_table(self) -> bool:
        return isinstance(self.rows, TableRows)

    def counts_per_user(self) -> Tensor:
        return torch.bincount(self.user_index, minlength=self.n_users)

    def pair_ids(self) -> Tensor | None:
        """Id (N,) of each comparison's unordered pair of texts (the same two table rows, in
        either orientation, share an id); None in dense form, where rows name no texts."""
        return self.rows.pair_ids() if isinstance(self.rows, TableRows) else None

    def users_of_rows(self) -> list[str]:
        return [self.user_ids[i] for i in self.user_index.tolist()]

    # ---- the two linear maps ------------------------------------------------------------
    def project(self, basis: Tensor) -> Tensor:
        """``X @ basis`` (N x K) without forming X in table form; differentiable in basis."""
        if torch.is_grad_enabled() and basis.requires_grad:
            return _Project.apply(basis, self)
        return self._project(basis)

    def _project(self, basis: Tensor) -> Tensor:
        # a contiguous (K, d) weight measured 2x faster than X @ V on CPU
        return self.rows.project(basis.T.contiguous())

    def project_for_scoring(self, basis: Tensor) -> Tensor:
        """``X @ basis`` for evaluation (no gradient), with the table's projection kept.

        Scoring several subsets of one table with one basis (the four numbers, every trial of
        a shots sweep) then projects the table once: the projection of the last few
        (table, basis) pairs is kept, keyed by the table object and its version and by the
        basis's bytes.
        """
        if isinstance(self.rows, DenseRows):
            return self._project(basis)
        return self.rows.project_for_scoring(basis)

    def backproject(self, grad: Tensor) -> Tensor:
        """``X.T @ grad`` (d x K) for grad of shape (N x K)."""
        return self.rows.backproject(grad)

    def feature_rows(self, start: int, stop: int, dtype=torch.float32) -> Tensor:
        """Rows ``start:stop`` of X, formed on demand."""
        return self.rows.feature_rows(start, stop, dtype)

    def feature_moments(self, batch_size: int | None = None) -> tuple[Tensor, Tensor]:
        """Per-dimension mean and RMS of X, computed batch by batch (float64).

        The default batch holds about 128 MiB of float64 rows whatever d is (65,536 rows
        at d = 4096 took +2.7 GiB). Every batch is formed in the same reused buffers:
        fresh batch-sized tensors page-faulted for 80 s of a 200 s fit at 100k users. The
        sums are those of the rows as formed (summing table rows by their pair counts
        instead rounds differently, and the protocol's fits amplified that to 0.8 points
        of accuracy).
        """
        if batch_size is None:
            batch_size = max(1, MOMENT_BATCH_BYTES // (8 * max(self.d, 1)))
        s1 = torch.zeros(self.d, dtype=torch.float64, device=self.device)
        s2 = torch.zeros_like(s1)
        rows = _RowBuffers(self, batch_size)
        for start in range(0, self.n, batch_size):
            x = rows.form(start, min(start + batch_size, self.n))
            s1 += x.sum(0)
            s2 += x.mul_(x).sum(0)
        n = max(self.n, 1)
        return s1 / n, (s2 / n).sqrt()

    # ---- reshaping ------------------------------------------------------------------------
    def subset(self, rows) -> Comparisons:
        """The comparisons at ``rows`` (bool mask or indices); users and table are shared."""
        rows = torch.as_tensor(rows, device=self.device)
        if rows.dtype == torch.bool:
            rows = rows.nonzero().flatten()
        return Comparisons(self.user_index[rows], self.user_ids, self.rows.subset(rows))

    def compact(self, *, centre: bool = False) -> Comparisons:
        """Drop table rows and users that no comparison uses (a copy of the used rows; none
        when every row is used and the rows need not change).

        ``centre=True`` also subtracts the kept rows' mean in that copy, in place: the same
        numbers as ``compact().centred()`` with one copy of the rows instead of two. A
        bfloat16/float16 table keeps its rows and stores the mean as ``table_offset``
        (centring in place would round the centred rows again).
        """
        users, uindex = torch.unique(self.user_index, return_inverse=True)
        ids = tuple(self.user_ids[i] for i in users.tolist())
        if isinstance(self.rows, DenseRows):
            return Comparisons(uindex, ids, self.rows)
        return Comparisons(uindex, ids, self.rows.compact(centre))

    def centred(self) -> Comparisons:
        """The same comparisons with the table's mean row subtracted (x is unchanged).

        Projecting a table with a large shared offset subtracts two large numbers per row;
        centring first keeps float32 projections as accurate as the dense form.
        """
        rows = self.rows
        if isinstance(rows, DenseRows) or rows.table.shape[0] == 0:
            return self
        if rows.table.dtype in LOW_PRECISION:
            return self.compact(centre=True).with_user_ids(self.user_ids)
        table = rows.table - rows.table.mean(dim=0, keepdim=True)
        return Comparisons(
            self.user_index, self.user_ids, TableRows(table, rows.chosen, rows.rejected)
        )

    def to(self, device=None, dtype=None, *, keep_low_precision: bool = False) -> Comparisons:
        """Move to ``device`` and cast floating tensors to ``dtype``; with
        ``keep_low_precision`` a bfloat16/float16 table keeps its dtype (the fit's passes
        upcast it block by block)."""
        return Comparisons(
            self.user_index.to(device),
            self.user_ids,
            self.rows.to(device, dtype, keep_low_precision),
        )

    def with_user_ids(self, user_ids: Sequence[str]) -> Comparisons:
        """Re-index users onto ``user_ids``, which must contain every id a row uses."""
        pos = {u: i for i, u in enumerate(user_ids)}
        remap = torch.tensor([pos.get(u, -1) for u in self.user_ids], dtype=torch.int64)
        index = remap.to(self.device)[self.user_index] if self.n else self.user_index
        if self.n and bool((index < 0).any()):
            first = int(self.user_index[(index < 0).nonzero()[0]])
            raise DataError(
                f"user id {self.user_ids[first]!r} is not among the {len(user_ids)} given ids"
            )
        return Comparisons(index, tuple(user_ids), self.rows)


class DifferenceRows:
    """``table[a] - table[b]`` for blocks of index pairs, gathered into two buffers of up to
    ``size`` rows kept across blocks (fresh block-sized tensors page-faulted for most of a
    100k-user fit). The rows are subtracted in the table's dtype, as the fit always has."""

    def __init__(self, table: Tensor, size: int):
        self.table = table
        self.x = torch.empty(max(1, size), table.shape[1], dtype=table.dtype, device=table.device)
        self.y = torch.empty_like(self.x)

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        """The rows (n, d) for ``a``, ``b`` (n,); valid until the next call."""
        n = a.numel()
        x, y = self.x[:n], self.y[:n]
        torch.index_select(self.table, 0, a, out=x)
        torch.index_select(self.table, 0, b, out=y)
        return x.sub_(y)


class _RowBuffers:
    """Feature rows of ``data`` formed into buffers of ``size`` rows kept across calls:
    float64 rows with the values of ``feature_rows(start, stop, torch.float64)``."""

    def __init__(self, data: Comparisons, size: int):
        self.data = data
        size = max(1, min(size, data.n))
        self.out = torch.empty(size, data.d, dtype=torch.float64, device=data.device)
        stored = data.rows
        self.table = stored if isinstance(stored, TableRows) else None
        self.diff = (
            DifferenceRows(stored.table, size)
            if isinstance(stored, TableRows) and stored.table.dtype == torch.float32
            else None
        )

    def form(self, start: int, stop: int) -> Tensor:
        out = self.out[: stop - start]
        if self.diff is None or self.table is None:
            return out.copy_(self.data.feature_rows(start, stop, torch.float64))
        rows = self.diff(self.table.chosen[start:stop], self.table.rejected[start:stop])
        return out.copy_(rows)


def _resolve_users(users, user_ids, n: int) -> tuple[Tensor, tuple[str, ...]]:
    if len(users) != n:
        raise DataError(f"{len(users)} user ids given for {n} comparisons")
    if user_ids is not None:
        idx = torch.as_tensor(np.asarray(users), dtype=torch.int64).flatten()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(user_ids)):
            raise DataError(f"user index outside 0..{len(user_ids) - 1}")
        return idx, tuple(str(u) for u in user_ids)
    index, ids = factorize_users(users)
    return torch.as_tensor(index, dtype=torch.int64), tuple(ids)

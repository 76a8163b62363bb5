"""Blocked table passes and low-precision (bfloat16 / float16) table storage."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lore_rm import Comparisons, LowRankReward
from lore_rm import table_passes as tp


def _problem(texts=203, d=24, pairs=300, k=3, offset=4.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(texts, d, generator=gen) + offset * torch.randn(d, generator=gen)
    c = torch.randint(0, texts, (pairs,), generator=gen)
    r = torch.randint(0, texts, (pairs,), generator=gen)
    v = torch.randn(d, k, generator=gen)
    g = torch.randn(pairs, k, generator=gen)
    return table, c, r, v, g


def _reference(table, c, r, v, g):
    """X @ V and X.T @ G in float64 from the dense difference rows."""
    x = table.double()[c] - table.double()[r]
    return x @ v.double(), x.T @ g.double()


def _rel(a, ref):
    return float((a.double() - ref).abs().max() / ref.abs().max())


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(tp, "BLOCK_BYTES", 4 * 24 * 7)  # 7 rows per block at d = 24: ragged end


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_blocked_passes_match_float64_on_the_stored_values(small_blocks, dtype):
    table, c, r, v, g = _problem()
    stored = table.to(dtype)
    z_ref, x_ref = _reference(stored, c, r, v, g)
    data = Comparisons.from_pairs(
        stored, c, r, torch.zeros(c.numel(), dtype=torch.long), user_ids=["u"]
    )
    assert data.table is stored  # kept as given: no float32 copy
    # float32 accumulation: only float32 rounding on top of the stored values
    assert _rel(data.project(v), z_ref) < 1e-5
    assert _rel(data.backproject(g), x_ref) < 1e-5
    centred = data.compact(centre=True)
    assert _rel(centred.project(v), z_ref) < 1e-5
    assert _rel(centred.backproject(g), x_ref) < 1e-5
    assert _rel(data.project(v.double()), z_ref) < 1e-12  # float64 basis: float64 blocks


def test_float32_blocked_passes_equal_the_one_gemm_forms(small_blocks):
    table, c, r, v, g = _problem(offset=0.0)
    p = tp.table_times(table, v.T.contiguous())
    assert torch.allclose(p, table @ v, rtol=1e-5, atol=1e-5)
    h = torch.randn(table.shape[0], v.shape[1])
    assert torch.allclose(tp.table_transpose_times(table, h), table.T @ h, rtol=1e-4, atol=1e-4)


def test_low_precision_centring_keeps_rows_and_stores_the_mean():
    table, c, r, v, g = _problem(offset=50.0)
    stored = table.to(torch.bfloat16)
    data = Comparisons.from_pairs(
        stored, c, r, torch.zeros(c.numel(), dtype=torch.long), user_ids=["u"]
    )
    centred = data.compact(centre=True)
    assert centred.table.dtype == torch.bfloat16 and centred.table_offset is not None
    used = torch.unique(torch.cat([c, r]))
    assert torch.allclose(centred.table_offset, stored[used].double().mean(0).float(), atol=1e-4)
    assert torch.equal(centred.table.float(), stored[used].float())  # rows not re-rounded
    z_ref, _ = _reference(stored, c, r, v, g)
    assert _rel(data.centred().project(v), z_ref) < 1e-5


class _BigFloatCopies(TorchDispatchMode):
    """Records float32/float64 tensors of at least ``numel`` elements made by any op."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.seen = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.dtype in (torch.float32, torch.float64):
                if t.numel() >= self.numel:
                    self.seen.append((str(func), tuple(t.shape)))
        return out


def test_a_bf16_fit_makes_no_float32_copy_of_the_table(small_blocks):
    gen = torch.Generator().manual_seed(1)
    texts, d = 600, 16
    table = torch.randn(texts, d, generator=gen).to(torch.bfloat16)
    perm = torch.randperm(texts, generator=gen)  # every text used: nothing to compact away
    users = torch.arange(texts // 2) % 20
    data = Comparisons.from_pairs(
        table, perm[: texts // 2], perm[texts // 2 :], users, user_ids=[f"u{i}" for i in range(20)]
    )
    watch = _BigFloatCopies(texts * d)
    with watch:
        model = LowRankReward(rank=2, weight_decay=0.1, n_iter=3).fit(data)
        model.score(data)
        model.personalize(data)
    assert model.basis_.dtype == torch.float32
    assert watch.seen == [], sorted(set(watch.seen))[:5]


def test_bf16_table_fit_scores_like_float32(easy_population, easy_rank3):
    split = easy_population.split

    def half(part):
        return Comparisons.from_pairs(
            part.table.to(torch.bfloat16),
            part.chosen,
            part.rejected,
            part.user_index,
            user_ids=part.user_ids,
        )

    # the ridge the float32 fit chose: one fit, not a second cross-validated search
    wd = easy_rank3.config_.weight_decay
    model = LowRankReward(rank=3, weight_decay=wd).fit(half(split.seen_train), split.reference_head)
    full = easy_rank3.score(split.seen_test)
    assert full > 0.75
    assert abs(model.score(half(split.seen_test)) - full) < 0.01
    assert abs(model.score(split.seen_test) - full) < 0.01


def test_a_bfloat16_store_loads_and_fits_in_bfloat16(tmp_path):
    from test_cli_fit import _cli, _two_kinds_of_users

    from lore_rm.embed.split import load_split

    src, ds = tmp_path / "prefs.jsonl", tmp_path / "ds"
    _two_kinds_of_users(src, n_users=12, per_user=12)
    assert _cli("prepare", "generic", src, "--out", ds, "--unseen-fraction", "0.25").exit_code == 0
    res = _cli(
        "embed", ds, "--backbone", "hashing-64", "--store-dtype", "bfloat16", "--no-progress"
    )
    assert res.exit_code == 0, res.output
    split, _ = load_split(ds)
    assert split.seen_train.table.dtype == torch.bfloat16  # the store's dtype, no float32 copy
    res = _cli("fit", ds, "--out", tmp_path / "m", "--rank", "2", "--no-progress")
    assert res.exit_code == 0, res.output
    model = LowRankReward.from_pretrained(tmp_path / "m")
    assert model.score(split.seen_test) > 0.9

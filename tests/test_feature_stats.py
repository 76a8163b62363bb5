"""Feature statistics formed in reused buffers: the same numbers as the rows formed anew."""

import torch

from lore_rm import Comparisons
from lore_rm.fit import start
from lore_rm.fit.start import user_feature_sums


def table_data(n: int = 600, t: int = 40, d: int = 12, offset: float = 0.0) -> Comparisons:
    g = torch.Generator().manual_seed(0)
    table = torch.randn(t, d, generator=g) * torch.rand(d, generator=g) * 5 + offset
    chosen = torch.randint(t - 5, (n,), generator=g)  # the last rows are never used
    rejected = torch.randint(t - 5, (n,), generator=g)
    rejected[:20] = chosen[:20]  # zero rows
    chosen[20:40], rejected[20:40] = rejected[40:60], chosen[40:60]  # a pair both ways
    return Comparisons.from_pairs(table, chosen, rejected, torch.randint(30, (n,), generator=g))


def batched_moments(data: Comparisons, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The moments as computed before the buffers: each batch's rows formed anew."""
    s1 = torch.zeros(data.d, dtype=torch.float64)
    s2 = torch.zeros_like(s1)
    for s in range(0, data.n, batch):
        x = data.feature_rows(s, s + batch, torch.float64)
        s1 += x.sum(0)
        s2 += (x * x).sum(0)
    return s1 / data.n, (s2 / data.n).sqrt()


def test_moments_equal_the_rows_formed_anew_bit_for_bit():
    for offset in (0.0, 30.0):
        data = table_data(offset=offset)
        dense = Comparisons.from_features(
            data.feature_rows(0, data.n), data.user_index, user_ids=data.user_ids
        )
        subset = data.subset(torch.arange(0, data.n, 3))
        for batch in (7, 64, 600, 1000):
            want = batched_moments(data, batch)
            for form, expected in ((data, want), (dense, want), (subset, None)):
                expected = expected or batched_moments(form, batch)
                got = form.feature_moments(batch)
                assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        e = data.table.double()
        x = e[data.chosen] - e[data.rejected]
        torch.testing.assert_close(data.feature_moments()[1], (x * x).mean(0).sqrt())


def test_user_sums_match_the_chunked_rows_bit_for_bit(monkeypatch):
    data = table_data()
    monkeypatch.setattr(start, "_CHUNK", 7)
    for rows in (None, torch.arange(5, data.n, 2)):
        idx = torch.arange(data.n) if rows is None else rows
        want = torch.zeros(data.n_users, data.d)
        for s in range(0, idx.numel(), 7):
            sub = data.subset(idx[s : s + 7])
            want.index_add_(0, sub.user_index, sub.feature_rows(0, sub.n))
        assert torch.equal(user_feature_sums(data, rows), want)

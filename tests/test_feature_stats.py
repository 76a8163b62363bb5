"""Feature statistics from the table and the pair indices, without dense difference rows."""

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


def dense_moments(data: Comparisons) -> tuple[torch.Tensor, torch.Tensor]:
    e = data.table.double()
    x = e[data.chosen] - e[data.rejected]
    return x.mean(0), (x * x).mean(0).sqrt()


def test_table_moments_equal_the_dense_rows_moments():
    for offset in (0.0, 30.0):
        data = table_data(offset=offset)
        mean, rms = data.feature_moments()
        want_mean, want_rms = dense_moments(data)
        torch.testing.assert_close(mean, want_mean, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(rms, want_rms, rtol=1e-9, atol=1e-9)
        # blocks of a few table rows and pairs give the same figures
        torch.testing.assert_close(data.feature_moments(batch_size=3)[1], rms)
        dense = Comparisons.from_features(
            data.feature_rows(0, data.n), data.user_index, user_ids=data.user_ids
        )
        torch.testing.assert_close(dense.feature_moments()[1], rms, rtol=1e-6, atol=0)


def test_subset_moments_count_only_its_rows():
    data = table_data()
    sub = data.subset(torch.arange(0, data.n, 3))
    torch.testing.assert_close(sub.feature_moments()[1], dense_moments(sub)[1])


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

"""simulate_population: the same populations for a seed, without dense difference rows."""

import hashlib

import pytest
import torch

from lore_rm import PopulationConfig, simulate_population
from lore_rm.evaluate import simulate
from lore_rm.evaluate.simulate import _pair_utilities

#: digests of every split's chosen/rejected/user rows and user ids, as drawn by the code that
#: formed all difference rows at once (before blocking): a seed's population must not move
FROZEN = [
    (
        dict(d=8, n_seen=30, n_unseen=10, n_prompts=100, seed=1),
        "3e2fb52e2d67ce3ddf1db8c66cb517bd5ef10ea9",
    ),
    (
        dict(
            d=48,
            true_rank=3,
            n_seen=40,
            n_unseen=12,
            train_per_user=30,
            n_prompts=200,
            responses_per_prompt=8,
            anisotropy=3.0,
            embedding_scale=20.0,
            seed=4,
        ),
        "9b2600374ee2dd98b59ad91c9a18de813fb97385",
    ),
]


def digest(pop) -> str:
    h = hashlib.sha1()
    s = pop.split
    for c in (s.seen_train, s.seen_test, s.unseen_fewshot, s.unseen_test):
        for t in (c.chosen, c.rejected, c.user_index):
            h.update(t.numpy().tobytes())
        h.update("|".join(c.user_ids).encode())
    return h.hexdigest()


@pytest.mark.parametrize("kw,expected", FROZEN)
def test_populations_of_a_seed_are_frozen(kw, expected, monkeypatch):
    # a tiny block so that every draw crosses several blocks
    monkeypatch.setattr(simulate, "PAIR_BLOCK_BYTES", 4 * kw["d"] * 7)
    assert digest(simulate_population(PopulationConfig(**kw))) == expected


def test_blocked_utilities_equal_the_dense_formula(monkeypatch):
    g = torch.Generator().manual_seed(0)
    table = torch.randn(50, 24, generator=g) * 10 + 3
    a, b = torch.randint(50, (1000,), generator=g), torch.randint(50, (1000,), generator=g)
    basis, w = torch.randn(24, 3, generator=g), torch.rand(1000, 3, generator=g)
    dense = (((table[a] - table[b]) @ basis) * w).sum(1)
    for rows in (1, 7, 333, 1000, 5000):
        monkeypatch.setattr(simulate, "PAIR_BLOCK_BYTES", 4 * 24 * rows)
        assert torch.equal(_pair_utilities(table, a, b, basis, w), dense)


def test_the_table_is_shared_and_indices_name_its_rows():
    pop = simulate_population(d=8, n_seen=20, n_unseen=5, n_prompts=50, seed=2)
    s = pop.split
    parts = (s.seen_train, s.seen_test, s.unseen_fewshot, s.unseen_test)
    assert all(c.features is None and c.table is parts[0].table for c in parts)
    per_prompt = pop.config.responses_per_prompt
    for c in parts:
        assert bool((c.chosen != c.rejected).all())
        assert torch.equal(c.chosen // per_prompt, c.rejected // per_prompt)

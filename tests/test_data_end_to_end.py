"""prepare generic -> embed (hashing stand-in) -> PreferenceDataset.to_split -> fit -> the four
numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from data_helpers import write_jsonl

from lore_rm import LowRankReward, four_numbers
from lore_rm.data import GenericConfig, PreferenceDataset, prepare_generic
from lore_rm.data.layout import read_conversations
from lore_rm.embed.hashing import HashingEmbedder

pytestmark = pytest.mark.slow  # integration: prepare -> embed -> fit

FAST = {"n_iter": 100, "fewshot_n_iter": 30}


def planted_rows(n_users=24, n_prompts=40, per_user=24, seed=0):
    """Two kinds of users: one prefers brief answers, the other detailed ones."""
    rng = np.random.default_rng(seed)
    brief = {p: f"brief short answer {p}" for p in range(n_prompts)}
    detailed = {p: f"detailed thorough explanation with examples {p}" for p in range(n_prompts)}
    rows = []
    for u in range(n_users):
        likes_brief = u % 2 == 0
        for p in rng.choice(n_prompts, per_user, replace=False):
            good, bad = (brief[p], detailed[p]) if likes_brief else (detailed[p], brief[p])
            rows.append(
                {
                    "prompt": f"please answer question {p}",
                    "chosen": good,
                    "rejected": bad,
                    "user_id": f"u{u:02d}",
                }
            )
    return rows


def test_prepare_embed_fit_four_numbers(tmp_path):
    src = write_jsonl(tmp_path / "prefs.jsonl", planted_rows())
    out = prepare_generic(
        [src], tmp_path / "ds", GenericConfig(unseen_fraction=0.25, test_fraction=0.5, seed=1)
    )
    ds = PreferenceDataset(out)
    embedder = HashingEmbedder(dim=64)
    table = embedder.embed(read_conversations(out))
    assert table.shape == (ds.n_texts, 64)
    assert ds.n_texts == 80  # 40 prompts x 2 responses, shared by all 24 users
    split = ds.to_split(table, reference_head=embedder.reference_head())
    # each user unseen by a stable draw from its id (about a quarter of the 24)
    assert split.seen_train.n_users + split.unseen_fewshot.n_users == 24
    assert 3 <= split.unseen_fewshot.n_users <= 9
    assert (
        split.seen_train.n + split.seen_test.n + split.unseen_fewshot.n + split.unseen_test.n
        == len(ds)
    )
    model = LowRankReward(rank=2, seed=0, **FAST).fit(split.seen_train, split.reference_head)
    numbers = four_numbers(model, split)
    for key in ("train", "seen_test", "fewshot_train", "unseen_test"):
        assert not math.isnan(numbers[key])
    # the two kinds of users are separable: seen and unseen users are predicted well
    assert numbers["seen_test"] > 0.9 and numbers["unseen_test"] > 0.9
    # one shared reward cannot serve both kinds: the same data at rank 1 is near chance
    single = LowRankReward(rank=1, seed=0, **FAST).fit(split.seen_train, split.reference_head)
    assert four_numbers(single, split)["seen_test"] < 0.75

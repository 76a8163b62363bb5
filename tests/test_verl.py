"""verl's custom reward function calling conventions (verl itself is not needed)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from serve_utils import D, LiveServer, shared_model_dir

from lore_rm import LowRankReward
from lore_rm.embed.hashing import HashingEmbedder
from lore_rm.errors import DataError
from lore_rm.serve import create_app
from lore_rm.serve.verl import make_verl_reward

PROMPTS = ["name a fruit", [{"role": "user", "content": "describe the sea"}], "third one"]
RESPONSES = ["apple cherry", "ocean night quiet", "violet tiger"]
USERS = ["seen1", "stranger", "seen4"]


@pytest.fixture()
def model_and_embedder():
    return LowRankReward.from_pretrained(shared_model_dir()), HashingEmbedder(D)


def extra_infos(prompt_key: str = "prompt", user_key: str = "user_id") -> list[dict]:
    pairs = enumerate(zip(PROMPTS, USERS, strict=True))
    return [{prompt_key: p, user_key: u, "index": i} for i, (p, u) in pairs]


def want(model, emb) -> np.ndarray:
    convs = [
        (p if isinstance(p, list) else [{"role": "user", "content": p}])
        + [{"role": "assistant", "content": r}]
        for p, r in zip(PROMPTS, RESPONSES, strict=True)
    ]
    return model.reward(emb.embed(convs), USERS, unknown="mean").double().numpy()


def assert_same(got: list[dict], expect: list[dict], rel: float = 1e-6) -> None:
    assert len(got) == len(expect)
    for g, e in zip(got, expect, strict=True):
        assert g == pytest.approx(e, rel=rel)


def test_signatures_match_verl():
    reward = make_verl_reward(url="http://127.0.0.1:1")
    single = inspect.signature(reward.compute_score).parameters
    assert list(single)[:4] == ["data_source", "solution_str", "ground_truth", "extra_info"]
    assert single["extra_info"].default is None
    assert any(p.kind is p.VAR_KEYWORD for p in single.values())
    batch = inspect.signature(reward.compute_score_batch).parameters
    assert list(batch)[:4] == ["data_sources", "solution_strs", "ground_truths", "extra_infos"]
    assert any(p.kind is p.VAR_KEYWORD for p in batch.values())


def test_local_scores_equal_model_reward(model_and_embedder):
    model, emb = model_and_embedder
    reward = make_verl_reward(model, emb, prompt_key="question", user_key="annotator")
    infos = extra_infos("question", "annotator")
    batch = reward.compute_score_batch(
        data_sources=np.array(["prism"] * 3, dtype=object),
        solution_strs=np.array(RESPONSES, dtype=object),
        ground_truths=np.array([None] * 3, dtype=object),
        extra_infos=np.array(infos, dtype=object),
        some_reward_kwarg=1,
    )
    np.testing.assert_allclose([b["score"] for b in batch], want(model, emb), rtol=1e-6)
    assert [b["lore_unknown_user"] for b in batch] == [0.0, 1.0, 0.0]
    assert [b["lore_missing_prompt"] for b in batch] == [0.0, 0.0, 0.0]
    one_by_one = [
        reward.compute_score("prism", r, None, info)
        for r, info in zip(RESPONSES, infos, strict=True)
    ]
    assert_same(one_by_one, batch)
    bare = make_verl_reward(
        model, emb, prompt_key="question", user_key="annotator", details=False, batch_size=1
    )
    got = bare.compute_score_batch(None, RESPONSES, None, infos)
    np.testing.assert_allclose(got, want(model, emb), rtol=1e-6)
    assert isinstance(bare.compute_score("x", RESPONSES[0], None, infos[0]), float)


def test_missing_prompt_scores_the_response_alone(model_and_embedder):
    model, emb = model_and_embedder
    reward = make_verl_reward(model, emb)
    e = emb.embed([[{"role": "assistant", "content": "apple"}]])
    alone = float(model.reward(e, "seen1"))
    for info in ({"user_id": "seen1"}, {"user_id": "seen1", "prompt": {"bad": 1}}):
        got = reward.compute_score("src", "apple", None, info)
        assert got["score"] == pytest.approx(alone, rel=1e-6)
        assert got["lore_missing_prompt"] == 1.0 and got["lore_unknown_user"] == 0.0
    # no extra_info at all: the population's weights, both flags
    got = reward.compute_score("src", "apple", None)
    pop = float(model.reward(e, [None], unknown="mean"))
    flags = {"lore_unknown_user": 1.0, "lore_missing_prompt": 1.0}
    assert got == pytest.approx({"score": pop, **flags})


def test_remote_matches_local(model_and_embedder, tmp_path):
    model, emb = model_and_embedder
    app = create_app(model, emb, tmp_path / "db.sqlite", token="tok")
    with LiveServer(app) as url:
        reward = make_verl_reward(url=url, token="tok", batch_size=2)
        batch = reward.compute_score_batch(None, RESPONSES, None, extra_infos())
        one_by_one = [
            reward.compute_score("s", r, None, info)
            for r, info in zip(RESPONSES, extra_infos(), strict=True)
        ]
        missing = reward.compute_score("s", "apple", None, {"user_id": "seen0"})
    np.testing.assert_allclose([b["score"] for b in batch], want(model, emb), rtol=1e-5)
    assert [b["lore_unknown_user"] for b in batch] == [0.0, 1.0, 0.0]
    assert_same(one_by_one, batch)
    assert missing["lore_missing_prompt"] == 1.0
    local = make_verl_reward(model, emb).compute_score("s", "apple", None, {"user_id": "seen0"})
    assert missing == pytest.approx(local, rel=1e-5)


def test_needs_exactly_one_backend(model_and_embedder):
    model, emb = model_and_embedder
    with pytest.raises(DataError, match="either"):
        make_verl_reward()
    with pytest.raises(DataError, match="either"):
        make_verl_reward(model, emb, url="http://x")
    with pytest.raises(DataError, match="embedder"):
        make_verl_reward(model)


def test_async_compute_score_batches_concurrent_calls(model_and_embedder):
    """verl >= 0.7 awaits an async compute_score per sample, many at once: the calls are
    scored together, with the results of the sync function."""
    import asyncio

    model, emb = model_and_embedder
    calls = []

    class Counting:
        name, dim = emb.name, emb.dim

        def embed(self, conversations, **kw):
            calls.append(len(conversations))
            return emb.embed(conversations)

    reward = make_verl_reward(model, Counting())
    assert inspect.iscoroutinefunction(reward.compute_score_async)
    infos = extra_infos() * 20

    async def run():
        return await asyncio.gather(
            *(
                reward.compute_score_async(
                    data_source="src", solution_str=r, ground_truth=None, extra_info=info
                )
                for r, info in zip(RESPONSES * 20, infos, strict=True)
            )
        )

    got = asyncio.run(run())
    calls_async = list(calls)
    calls.clear()
    pairs = zip(RESPONSES * 20, infos, strict=True)
    sync = [reward.compute_score("src", r, None, i) for r, i in pairs]
    assert_same(got, sync)
    assert len(calls_async) <= 3 < len(calls)  # 60 samples in a few batches, not 60 calls
    np.testing.assert_allclose([g["score"] for g in got[:3]], want(model, emb), rtol=1e-6)


def test_async_compute_score_through_the_service(model_and_embedder, tmp_path):
    import asyncio

    model, emb = model_and_embedder
    with LiveServer(create_app(model, emb, tmp_path / "db.sqlite")) as url:
        reward = make_verl_reward(url=url)

        async def run():
            return await asyncio.gather(
                *(
                    reward.compute_score_async("src", r, None, i)
                    for r, i in zip(RESPONSES, extra_infos(), strict=True)
                )
            )

        got = asyncio.run(run())
    np.testing.assert_allclose([g["score"] for g in got], want(model, emb), rtol=1e-6)
    assert [g["lore_unknown_user"] for g in got] == [0.0, 1.0, 0.0]

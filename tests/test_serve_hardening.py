"""Hardening of the service (issue #28), each against a live uvicorn on loopback: texts over a
character limit, bodies with many unknown keys, a user whose stored rows disappear, the
Host allow-list and the header-read timeout, token redaction, bounded per-user history, path
user ids that are not UTF-8 and the locations errors name."""

from __future__ import annotations

import httpx
import pytest
from serve_utils import D, LiveServer, conversation, shared_model_dir

from lore_rm import LowRankReward
from lore_rm.embed.hashing import HashingEmbedder
from lore_rm.serve import Limits, create_app


@pytest.fixture(scope="module")
def model() -> LowRankReward:
    return LowRankReward.from_pretrained(shared_model_dir())


def serve(model, tmp_path, **kw):
    """A live server over ``model`` and the hashing backbone (``kw``: create_app's)."""
    return LiveServer(create_app(model, HashingEmbedder(D), tmp_path / "db.sqlite", **kw))


# ---- defect 1: texts over a character limit ---------------------------------------------------
def test_a_text_over_the_character_limit_is_a_422_naming_it(model, tmp_path):
    limit = 1000
    ok, long = "a" * limit, "b" * (limit + 1)
    bodies = {
        "/reward": lambda t: {"user": "seen1", "conversations": [conversation("hi", t)]},
        "/get_reward": lambda t: {"query": [t], "prompts": [t[:3]]},
        "/users/ann/comparisons": lambda t: {
            "comparisons": [{"prompt": "q", "chosen": t, "rejected": "no"}]
        },
        "/users/ann/next-questions": lambda t: {
            "candidates": [{"prompt": "q", "response_a": "yes", "response_b": t}],
            "n": 1,
        },
    }
    where = {
        "/reward": ["body", "conversations", 0, 1, "content"],
        "/get_reward": ["body", "query", 0],
        "/users/ann/comparisons": ["body", "comparisons", 0, "chosen", 0, "content"],
        "/users/ann/next-questions": ["body", "candidates", 0, "response_b", 0, "content"],
    }
    with serve(model, tmp_path, limits=Limits(max_text_chars=limit)) as url:
        for path, make in bodies.items():
            assert httpx.post(url + path, json=make(ok), timeout=30).status_code == 200, path
            r = httpx.post(url + path, json=make(long), timeout=30)
            assert r.status_code == 422, (path, r.text)
            (err,) = r.json()["detail"]
            assert err["loc"] == where[path]
            assert f"{limit + 1} characters" in err["msg"] and f"at most {limit}" in err["msg"]
        info = httpx.get(url + "/model-info").json()
    assert info["limits"]["max_text_chars"] == limit

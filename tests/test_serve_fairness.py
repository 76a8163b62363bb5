"""No single request stalls reward traffic (issue #28, defect 2): large onboarding,
next-questions and /reward requests are cut into chunks that a one-text reward request
overtakes. A live uvicorn on loopback over the hashing backbone slowed to a CPU backbone's
cost per text (a fixed sleep per conversation, which releases the GIL as a forward pass
does)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from serve_utils import D, LiveServer, conversation, shared_model_dir

from lore_rm import LowRankReward
from lore_rm.embed.hashing import HashingEmbedder
from lore_rm.serve import create_app

PER_TEXT_S = 0.004  # seconds of "backbone" per conversation
LARGE = 240  # pairs (or conversations x 2): ~1.9 s of backbone time


class SlowHashing(HashingEmbedder):
    """HashingEmbedder that costs ``PER_TEXT_S`` per conversation, and says when it runs."""

    def __init__(self) -> None:
        super().__init__(D)
        self.texts = 0
        self.started = threading.Event()

    def embed(self, conversations, **kw):
        self.started.set()
        self.texts += len(conversations)
        time.sleep(PER_TEXT_S * len(conversations))
        return super().embed(conversations, **kw)


def large_body(path: str) -> dict:
    pairs = [
        {"prompt": f"question {i}", "a": f"winter river {i}", "b": f"sunny tiger {i}"}
        for i in range(LARGE)
    ]
    if path == "comparisons":
        return {
            "comparisons": [
                {"prompt": p["prompt"], "chosen": p["a"], "rejected": p["b"]} for p in pairs
            ]
        }
    if path == "next-questions":
        return {
            "candidates": [
                {"prompt": p["prompt"], "response_a": p["a"], "response_b": p["b"]} for p in pairs
            ],
            "n": 3,
        }
    convs = [conversation(p["prompt"], p[k]) for p in pairs for k in "ab"]
    return {"user": "seen1", "conversations": convs}


@pytest.mark.parametrize("large", ["comparisons", "next-questions", "reward"])
def test_a_one_text_reward_overtakes_a_large_request(large, tmp_path):
    emb = SlowHashing()
    model = LowRankReward.from_pretrained(shared_model_dir())
    app = create_app(model, emb, tmp_path / "db.sqlite")  # the default queue settings
    path = "/reward" if large == "reward" else f"/users/newbie/{large}"
    one = {"user": "seen2", "conversations": [conversation("hi", "winter river")]}
    with LiveServer(app) as url:
        httpx.post(url + "/reward", json=one, timeout=30)  # the first call times the backbone
        emb.started.clear()
        before = emb.texts
        done: list[httpx.Response] = []
        big = threading.Thread(
            target=lambda: done.append(httpx.post(url + path, json=large_body(large), timeout=60))
        )
        big.start()
        assert emb.started.wait(10)
        time.sleep(0.1)  # the large request is being embedded
        t0 = time.monotonic()
        r = httpx.post(url + "/reward", json=one, timeout=30)
        waited = time.monotonic() - t0
        left = 2 * LARGE - (emb.texts - before)  # the large request's texts not yet embedded
        big.join(30)
    assert r.status_code == 200 and done[0].status_code == 200, done[0].text
    assert left > LARGE // 2, "the reward request did not overtake the large one"
    assert waited < 0.8, f"a one-text reward request waited {waited:.2f} s"

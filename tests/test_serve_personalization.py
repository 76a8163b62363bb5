"""Personalisation strength in the service, through a live uvicorn: per request, per user
(stored; 0 opts out), and a model that does not personalise saying so."""

from __future__ import annotations

import json

import httpx
import pytest
from serve_utils import D, LiveServer, conversation, shared_model_dir

from lore_rm import LowRankReward
from lore_rm.embed.hashing import HashingEmbedder
from lore_rm.serve import create_app

CONVS = [conversation("tell me a story", t) for t in ("winter river", "sunny tiger", "ocean")]
CANDIDATES = [
    {"prompt": f"question {i}", "response_a": f"winter {i}", "response_b": f"tiger {i}"}
    for i in range(4)
]


def rewards(client, user, **extra) -> list[float]:
    """Rewards of CONVS for ``user`` (None: an unknown user, the population's weights)."""
    who = {"user": user} if user is not None else {"users": [None] * len(CONVS)}
    out = client.post("/reward", json={**who, "conversations": CONVS, **extra})
    assert out.status_code == 200, out.text
    return out.json()["rewards"]


def serve(model, db):
    return LiveServer(create_app(model, HashingEmbedder(D), db))


def test_strength_per_request_and_per_user_survives_a_restart_and_a_deletion(tmp_path):
    model = LowRankReward.from_pretrained(shared_model_dir())
    assert model.personalizes
    db = tmp_path / "db.sqlite"
    with serve(model, db) as url, httpx.Client(base_url=url, timeout=30) as client:
        info = client.get("/model-info").json()
        assert info["personalizes"] and info["why"] == ""
        assert info["personalization"] == model.personalization_
        assert info["weights"] == "simplex"
        own = rewards(client, "seen1", personalization=1.0)
        shared = rewards(client, "seen1", personalization=0.0)
        assert shared == pytest.approx(rewards(client, None))
        assert own != pytest.approx(shared)
        half = rewards(client, "seen1", personalization=0.5)
        assert half == pytest.approx([(a + b) / 2 for a, b in zip(own, shared, strict=True)])
        # the user opts out: every reward of theirs is the shared one, and nothing is asked
        put = client.put("/users/seen1/personalization", json={"personalization": 0})
        assert put.status_code == 200, put.text
        body = put.json()
        assert body["personalization"] == 0 and body["personalization_chosen"] == 0
        assert not body["personalizes"]
        assert body["served_weights"] == pytest.approx(info["population_weights"])
        assert rewards(client, "seen1") == pytest.approx(shared)
        assert rewards(client, "seen2") == pytest.approx(
            rewards(client, "seen2", personalization=model.personalization_)
        )
        asked = client.post(
            "/users/seen1/next-questions", json={"candidates": CANDIDATES, "n": 2}
        ).json()
        assert asked["questions"] == [] and "opted out" in asked["reason"]
        assert (
            client.post(
                "/users/seen2/next-questions", json={"candidates": CANDIDATES, "n": 2}
            ).json()["reason"]
            is None
        )
    with serve(model, db) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/users/seen1").json()["personalization_chosen"] == 0
        assert rewards(client, "seen1") == pytest.approx(shared)
        assert client.get("/users/seen1/data").json()["personalization_chosen"] == 0
        assert client.delete("/users/seen1").status_code == 200
        assert client.get("/users/seen1").json()["personalization_chosen"] is None
        # back: null restores the model's strength
        client.put("/users/seen2/personalization", json={"personalization": 0.25})
        assert client.get("/users/seen2").json()["personalization"] == 0.25
        client.put("/users/seen2/personalization", json={"personalization": None})
        assert client.get("/users/seen2").json()["personalization"] == model.personalization_


@pytest.mark.parametrize("bad", [1.5, -0.1, "high", float("nan")])
def test_a_bad_strength_is_a_422(tmp_path, bad):
    model = LowRankReward.from_pretrained(shared_model_dir())
    with serve(model, tmp_path / "db.sqlite") as url, httpx.Client(base_url=url) as client:

        def send(method, path, body):  # NaN as JSON's NaN token, as Python's json writes it
            data = json.dumps(body).encode()
            headers = {"content-type": "application/json"}
            return client.request(method, path, content=data, headers=headers)

        body = {"user": "seen1", "conversations": CONVS, "personalization": bad}
        assert send("POST", "/reward", body).status_code == 422
        put = send("PUT", "/users/seen1/personalization", {"personalization": bad})
        assert put.status_code == 422, put.text
        assert client.get("/users/seen1").json()["personalization_chosen"] is None


def test_a_model_that_does_not_personalise_says_so_and_asks_nothing(tmp_path):
    model = LowRankReward.from_pretrained(shared_model_dir())
    model.personalization_ = 0.0
    model.save_pretrained(tmp_path / "m")
    off = LowRankReward.from_pretrained(tmp_path / "m")
    with serve(off, tmp_path / "db.sqlite") as url, httpx.Client(base_url=url) as client:
        info = client.get("/model-info").json()
        assert not info["personalizes"] and "strength 0" in info["why"]
        assert client.get("/users/seen1").json()["personalizes"] is False
        asked = client.post(
            "/users/seen1/next-questions", json={"candidates": CANDIDATES, "n": 2}
        ).json()
        assert asked["questions"] == [] and "does not personalise" in asked["reason"]
        assert rewards(client, "seen1") == pytest.approx(rewards(client, None))

"""The HTTP service against a real uvicorn server on loopback."""

from __future__ import annotations

import json
import threading
import warnings

import httpx
import numpy as np
import pytest
import torch
from serve_utils import (
    D,
    LiveServer,
    conversation,
    shared_model_dir,
    start_lore_serve,
    stop_lore_serve,
    wait_until,
)

from lore_rm import Comparisons, LowRankReward
from lore_rm.embed.hashing import HashingEmbedder
from lore_rm.errors import ModelFormatError
from lore_rm.serve import Limits, QueryFormat, create_app
from lore_rm.serve.service import RewardService
from lore_rm.serve.user_store import Store, StoredComparison

TOKEN = "s3cret-token"


@pytest.fixture()
def small_model_dir():
    return shared_model_dir()


@pytest.fixture()
def small_model(small_model_dir) -> LowRankReward:
    return LowRankReward.from_pretrained(small_model_dir)


@pytest.fixture()
def embedder() -> HashingEmbedder:
    return HashingEmbedder(D)


def expected(model: LowRankReward, emb, convs, user) -> np.ndarray:
    return model.reward(emb.embed(convs), user, unknown="mean").double().numpy()


def onboarding_body(n: int, flip: bool = False, offset: int = 0) -> dict:
    """Comparisons of a user who prefers the response naming a 'winter' thing (or not)."""
    items = []
    for i in range(n):
        good = f"winter river quiet {i + offset}"
        bad = f"sunny tiger funny {i + offset}"
        chosen, rejected = (bad, good) if flip else (good, bad)
        items.append(
            {"prompt": f"tell me about topic {i + offset}", "chosen": chosen, "rejected": rejected}
        )
    return {"comparisons": items}


@pytest.fixture()
def served(small_model, embedder, tmp_path):
    app = create_app(small_model, embedder, tmp_path / "db.sqlite")
    with LiveServer(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, app


# ---- endpoints --------------------------------------------------------------------------------
def test_health_model_info_openapi(served, small_model):
    client, _ = served
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/model-info").json()
    assert info["rank"] == 3 and info["d"] == small_model.d_
    assert info["n_model_users"] == len(small_model.users_)
    assert info["margin_scale"] == small_model.margin_scale_
    assert info["auth"] is False and info["limits"]["max_batch"] == 512
    paths = client.get("/openapi.json").json()["paths"]
    for p in (
        "/get_reward",
        "/reward",
        "/users/{user_id}/comparisons",
        "/users/{user_id}",
        "/model-info",
        "/health",
    ):
        assert p in paths


def test_get_reward_openrlhf_shape(served, small_model, embedder):
    client, _ = served
    prompts = ["what fruit is best", "describe the ocean"]
    responses = ["apple banana cherry", "ocean night violet"]
    body = {
        "query": [p + r for p, r in zip(prompts, responses, strict=True)],
        "prompts": prompts,
        "labels": ["seen1", "nobody-knows-me"],
    }
    out = client.post("/get_reward", json=body)
    assert out.status_code == 200, out.text
    data = out.json()
    assert set(data) == {"rewards", "scores", "extra_logs"}
    convs = [conversation(p, r) for p, r in zip(prompts, responses, strict=True)]
    want = [
        expected(small_model, embedder, [convs[0]], "seen1")[0],
        expected(small_model, embedder, [convs[1]], "nobody-knows-me")[0],
    ]
    np.testing.assert_allclose(data["rewards"], want, rtol=1e-5, atol=1e-6)
    assert data["scores"] == data["rewards"]
    assert data["extra_logs"]["lore_unknown_user"] == [0.0, 1.0]
    # the unknown user got the population's mean weights
    pop = (
        small_model.reward_scale
        * embedder.embed([convs[1]])
        @ small_model.basis_
        @ small_model.population_weights_
    )
    np.testing.assert_allclose(data["rewards"][1], float(pop[0]), rtol=1e-5)
    # no labels at all, or OpenRLHF's "" without --label_key: unknown, never a 500
    out = client.post("/get_reward", json={"query": body["query"], "prompts": prompts})
    assert out.status_code == 200 and out.json()["extra_logs"]["lore_unknown_user"] == [1.0, 1.0]
    out = client.post("/get_reward", json={**body, "labels": ["", 7]}).json()
    assert out["extra_logs"]["lore_unknown_user"] == [1.0, 1.0]
    assert out["rewards"][1] == pytest.approx(data["rewards"][1], rel=1e-6)


def native_reward(client, user: str, *turns: tuple[str, str]) -> float:
    """The ``/reward`` of one conversation given as (role, content) turns."""
    convs = [[{"role": r, "content": c} for r, c in turns]]
    return client.post("/reward", json={"user": user, "conversations": convs}).json()["rewards"][0]


def test_get_reward_parses_chat_templates(served):
    client, _ = served
    prompt = (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nname a fruit<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    query = prompt + "apple cherry<|im_end|><|endoftext|>"
    got = client.post(
        "/get_reward", json={"query": [query], "prompts": [prompt], "labels": ["seen2"]}
    ).json()["rewards"][0]
    native = native_reward(
        client,
        "seen2",
        ("system", "be brief"),
        ("user", "name a fruit"),
        ("assistant", "apple cherry"),
    )
    assert got == pytest.approx(native, rel=1e-6)


def test_get_reward_truncated_prompt_is_scored_and_flagged(served):
    """OpenRLHF truncates a long prompt: the query no longer starts with its prompt. That
    sample is read on its own and flagged; the rest of the batch is scored as usual."""
    client, _ = served
    prompt = (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nname a fruit<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    good = prompt + "apple cherry<|im_end|>"
    cut = prompt[prompt.index("<|im_start|>user") :]  # the system turn was cut off
    truncated = cut + "tiger river<|im_end|><|endoftext|>"
    body = {
        "query": [good, truncated, good],
        "prompts": [prompt, prompt, prompt],
        "labels": ["seen1", "seen2", "stranger"],
    }
    out = client.post("/get_reward", json=body)
    assert out.status_code == 200, out.text
    data = out.json()
    assert data["extra_logs"]["lore_prompt_mismatch"] == [0.0, 1.0, 0.0]
    assert data["extra_logs"]["lore_unknown_user"] == [0.0, 0.0, 1.0]
    alone = client.post(
        "/get_reward", json={"query": [good], "prompts": [prompt], "labels": ["seen1"]}
    ).json()
    assert alone["extra_logs"]["lore_prompt_mismatch"] == [0.0]
    assert data["rewards"][0] == pytest.approx(alone["rewards"][0], rel=1e-6)
    # the truncated query is scored as the conversation it still holds
    native = native_reward(client, "seen2", ("user", "name a fruit"), ("assistant", "tiger river"))
    assert data["rewards"][1] == pytest.approx(native, rel=1e-6)


def test_native_reward_batched(served, small_model, embedder):
    client, _ = served
    convs = [conversation("hello there", f"reply {w}") for w in ("apple", "tiger", "ocean")]
    out = client.post("/reward", json={"user": "seen3", "conversations": convs})
    assert out.status_code == 200, out.text
    data = out.json()
    np.testing.assert_allclose(
        data["rewards"], expected(small_model, embedder, convs, "seen3"), rtol=1e-5, atol=1e-6
    )
    assert data["known"] == [True] * 3 and data["n_unknown"] == 0
    out = client.post(
        "/reward", json={"users": ["seen0", "ghost", None], "conversations": convs}
    ).json()
    assert out["known"] == [True, False, False] and out["n_unknown"] == 2
    assert out["rewards"][0] == pytest.approx(
        expected(small_model, embedder, convs[:1], "seen0")[0], rel=1e-5
    )


# ---- bad bodies -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/get_reward", {"prompts": ["a"]}, "query"),
        ("/get_reward", {"query": "not a list"}, "query"),
        ("/get_reward", {"query": ["abc", "abd"], "prompts": ["a"]}, "prompts"),
        ("/get_reward", {"query": ["ab"], "labels": [{"user": 1}]}, "labels"),
        ("/reward", {"user": "u"}, "conversations"),
        ("/reward", {"user": "u", "conversations": []}, "conversations"),
        (
            "/reward",
            {"user": "u", "conversations": [[{"role": "robot", "content": "x"}]]},
            "conversations",
        ),
        (
            "/reward",
            {"user": "u", "conversations": [[{"role": "user", "content": "x"}]]},
            "conversations",
        ),
        ("/reward", {"conversations": [[{"role": "assistant", "content": "x"}]]}, "user"),
        (
            "/reward",
            {
                "user": "u",
                "users": ["u"],
                "conversations": [[{"role": "assistant", "content": "x"}]],
            },
            "user",
        ),
        ("/users/bob/comparisons", {"comparisons": []}, "comparisons"),
        (
            "/users/bob/comparisons",
            {"comparisons": [{"prompt": "p", "chosen": "c"}]},
            "comparisons",
        ),
        (
            "/users/bob/comparisons",
            {
                "comparisons": [
                    {"prompt": "p", "chosen": [{"role": "user", "content": "c"}], "rejected": "r"}
                ]
            },
            "comparisons",
        ),
    ],
)
def test_bad_bodies_get_422_naming_the_field(served, path, body, field):
    client, _ = served
    out = client.post(path, json=body)
    assert out.status_code == 422, out.text
    locs = [d["loc"] for d in out.json()["detail"]]
    assert any(field in loc for loc in locs), locs


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("/get_reward", {"query": [1] * 300_000}, ["body", "query"]),
        ("/get_reward", {"query": ["a"], "prompts": [None] * 300_000}, ["body", "prompts"]),
        ("/reward", {"users": [2] * 300_000, "conversations": []}, ["body", "users"]),
        (
            "/reward",
            {"user": "u", "conversations": [[1] * 300_000]},
            ["body", "conversations", 0, 0],
        ),
        (
            "/users/bob/comparisons",
            {"comparisons": [{"prompt": [1] * 300_000, "chosen": "c", "rejected": "r"}]},
            ["body", "comparisons", 0, "prompt"],
        ),
    ],
)
def test_many_bad_items_get_a_small_422(served, path, body, loc):
    """A list of 300k non-strings is refused in one pass with a small body (the first few
    bad items and a count), and the server keeps answering (a million: 413, before parsing,
    see test_serve_hardening.py)."""
    client, _ = served
    raw = json.dumps(body, separators=(",", ":")).encode()
    assert len(raw) > 590_000
    out = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert out.status_code == 422, out.text[:500]
    assert len(out.content) < 4096
    detail = out.json()["detail"]
    assert len(detail) <= 5
    assert detail[0]["loc"][: len(loc)] == loc, detail
    if loc[-1] in ("query", "prompts", "users"):
        assert "300000 of " in detail[0]["msg"] and "more" in detail[0]["msg"]
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("/get_reward", {"query": ["ok", "bad \ud800"]}, ["body", "query", 1]),
        ("/get_reward", {"query": ["ok"], "labels": ["al\ud800ice"]}, ["body", "labels", 0]),
        (
            "/reward",
            {"user": "\udfff", "conversations": [[{"role": "assistant", "content": "x"}]]},
            ["body", "user"],
        ),
        (
            "/reward",
            {"users": ["a\ud83d"], "conversations": [[{"role": "assistant", "content": "x"}]]},
            ["body", "users", 0],
        ),
        (
            "/reward",
            {"user": "u", "conversations": [[{"role": "assistant", "content": "x\ud800"}]]},
            ["body", "conversations", 0, 0, "content"],
        ),
        (
            "/users/bob/comparisons",
            {"comparisons": [{"prompt": "p", "chosen": "c\ud800", "rejected": "r"}]},
            ["body", "comparisons", 0, "chosen"],
        ),
        ("/get_reward", {"query": ["ok", float("nan")]}, ["body", "query"]),
        ("/get_reward", {"query": ["ok"], "prompts": [float("inf")]}, ["body", "prompts"]),
        ("/get_reward", {"query": ["ok"], "labels": [float("nan")]}, ["body", "labels", 0]),
        (
            "/reward",
            {"user": "u", "conversations": [[{"role": "assistant", "content": float("nan")}]]},
            ["body", "conversations", 0, 0, "content"],
        ),
        (
            "/users/bob/comparisons",
            {"comparisons": [{"prompt": "p", "chosen": "c", "rejected": float("-inf")}]},
            ["body", "comparisons", 0, "rejected"],
        ),
    ],
)
def test_lone_surrogates_and_non_finite_numbers_are_422(served, path, body, loc):
    client, _ = served
    raw = json.dumps(body)  # a lone surrogate goes on the wire as "\\ud800", NaN as NaN
    assert "\\ud" in raw or "NaN" in raw or "Infinity" in raw
    out = client.post(path, content=raw.encode(), headers={"content-type": "application/json"})
    assert out.status_code == 422, out.text
    locs = [d["loc"] for d in out.json()["detail"]]
    assert any(got[: len(loc)] == loc for got in locs), locs
    # and nothing was stored
    assert client.get("/users/bob").json()["n_comparisons"] == 0


@pytest.mark.parametrize(
    "bad",
    [
        {"prompt": "p", "chosen": "same", "rejected": "same"},
        {"prompt": "p", "chosen": "", "rejected": "r"},
        {"prompt": "p", "chosen": [{"role": "assistant", "content": "  "}], "rejected": "r"},
        {"prompt": "", "chosen": "c", "rejected": "r"},
    ],
)
def test_onboarding_refuses_empty_and_identical_pairs(served, bad):
    client, _ = served
    good = {"prompt": "p", "chosen": "c", "rejected": "r"}
    out = client.post("/users/bob/comparisons", json={"comparisons": [good, bad]})
    assert out.status_code == 422, out.text
    detail = out.json()["detail"][0]
    assert detail["loc"] == ["body", "comparisons", 1]
    assert "comparisons[1]" in detail["msg"]
    assert client.get("/users/bob").json()["n_comparisons"] == 0


def test_invalid_json_is_422(served):
    client, _ = served
    out = client.post("/reward", content=b"{not json", headers={"content-type": "application/json"})
    assert out.status_code == 422
    assert out.json()["detail"][0]["loc"][0] == "body"


def test_limits_413(small_model, embedder, tmp_path):
    limits = Limits(max_body_bytes=4000, max_batch=3, max_comparisons=2)
    app = create_app(small_model, embedder, tmp_path / "db.sqlite", limits=limits)
    with LiveServer(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        out = client.post("/get_reward", json={"query": ["a", "b", "c", "d"]})
        assert out.status_code == 413 and out.json()["detail"][0]["loc"] == ["body", "query"]
        conv = [{"role": "assistant", "content": "x"}]
        out = client.post("/reward", json={"user": "u", "conversations": [conv] * 4})
        assert out.status_code == 413 and "conversations" in out.json()["detail"][0]["loc"]
        out = client.post("/users/u/comparisons", json=onboarding_body(3))
        assert out.status_code == 413 and "comparisons" in out.json()["detail"][0]["loc"]
        big = {"query": ["x" * 5000]}
        out = client.post("/get_reward", json=big)
        assert out.status_code == 413 and "4000" in out.json()["detail"][0]["msg"]
        # no content-length (chunked): still bounded
        payload = json.dumps(big).encode()
        out = client.post(
            "/get_reward",
            content=iter([payload[:100], payload[100:]]),
            headers={"content-type": "application/json"},
        )
        assert out.status_code == 413
        small = json.dumps({"query": ["ok"]}).encode()
        out = client.post(
            "/get_reward",
            content=iter([small[:5], small[5:]]),
            headers={"content-type": "application/json"},
        )
        assert out.status_code == 200 and len(out.json()["rewards"]) == 1


# ---- auth -------------------------------------------------------------------------------------
def test_auth_on(small_model, embedder, tmp_path):
    app = create_app(small_model, embedder, tmp_path / "db.sqlite", token=TOKEN)
    conv = [conversation("p", "r")]
    with LiveServer(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/health").status_code == 200
        for method, path, body in [
            ("GET", "/model-info", None),
            ("GET", "/users/seen1", None),
            ("POST", "/get_reward", {"query": ["x"]}),
            ("POST", "/reward", {"user": "u", "conversations": conv}),
            ("POST", "/users/u/comparisons", onboarding_body(1)),
        ]:
            out = client.request(method, path, json=body)
            assert out.status_code == 401, (path, out.text)
            assert out.headers["www-authenticate"] == "Bearer"
            wrong = client.request(
                method, path, json=body, headers={"Authorization": "Bearer nope"}
            )
            assert wrong.status_code == 401
            ok = client.request(
                method, path, json=body, headers={"Authorization": f"Bearer {TOKEN}"}
            )
            assert ok.status_code == 200, (path, ok.text)
        # clients that cannot set headers (OpenRLHF): the token in the query string
        assert (
            client.post(f"/get_reward?access_token={TOKEN}", json={"query": ["x"]}).status_code
            == 200
        )
        # unauthenticated malformed bodies are refused for auth, not parsed
        assert client.post("/reward", json={"bad": 1}).status_code == 401
        assert (
            client.get("/model-info", headers={"Authorization": f"Bearer {TOKEN}"}).json()["auth"]
            is True
        )


def test_the_token_is_checked_before_the_body_is_read():
    import asyncio

    from lore_rm.serve.auth import TokenGate

    reached: list[str] = []

    async def inner(scope, receive, send):
        reached.append(scope["path"])

    async def receive():  # the body: must never be read for a refused request
        raise AssertionError("the body was read")

    def call(path, headers=(), query=b""):
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "path": path, "headers": list(headers), "query_string": query}
        asyncio.run(TokenGate(inner, TOKEN)(scope, receive, send))
        return sent[0]["status"] if sent else None

    assert call("/reward") == 401
    assert call("/reward", [(b"authorization", b"Bearer nope")]) == 401
    assert call("/reward", [(b"authorization", f"Bearer {TOKEN}".encode())]) is None
    assert call("/get_reward", query=f"access_token={TOKEN}".encode()) is None
    assert call("/health") is None
    assert reached == ["/reward", "/get_reward", "/health"]


def test_access_log_redacts_the_token(small_model, embedder, tmp_path):
    import logging

    from uvicorn.logging import AccessFormatter, DefaultFormatter

    secret = "secret123"
    app = create_app(small_model, embedder, tmp_path / "db.sqlite", token=secret)
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    server = LiveServer(app, log_level="info", access_log=True)
    handlers = {}
    for name, fmt in (
        ("uvicorn.access", AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s')),
        ("uvicorn.error", DefaultFormatter("%(message)s")),
    ):
        handlers[name] = Keep()
        handlers[name].setFormatter(fmt)
        logging.getLogger(name).addHandler(handlers[name])
    try:
        with server as url, httpx.Client(base_url=url, timeout=30) as client:
            out = client.post(f"/get_reward?x=1&access_token={secret}", json={"query": ["x"]})
            assert out.status_code == 200
            assert client.get(f"/model-info?access_token={secret}").status_code == 200
            assert client.get("/model-info?access_token=wrong-one").status_code == 401
            logging.getLogger("uvicorn.error").warning("header Authorization: Bearer %s", secret)
            wait_until(lambda: sum("/get_reward" in x or "/model-info" in x for x in lines) >= 3)
    finally:
        for name, handler in handlers.items():
            logging.getLogger(name).removeHandler(handler)
    access = [line for line in lines if "/get_reward" in line or "/model-info" in line]
    assert len(access) == 3, lines
    assert all("access_token=[redacted]" in line for line in access), access
    assert any("x=1&access_token=[redacted]" in line for line in access)
    assert any("Authorization: Bearer [redacted]" in line for line in lines), lines
    assert not any(secret in line or "wrong-one" in line for line in lines), lines


def test_redact():
    from lore_rm.serve.redact import redact

    assert redact("GET /a?access_token=abc&b=2 HTTP/1.1") == (
        "GET /a?access_token=[redacted]&b=2 HTTP/1.1"
    )
    assert redact("/a?my_access_token=keep") == "/a?my_access_token=keep"
    assert redact("{'authorization': 'Bearer abc'}") == "{'authorization': 'Bearer [redacted]'}"
    assert redact("(b'authorization', b'Bearer abc')") == "(b'authorization', b'Bearer [redacted]')"
    assert redact("nothing to hide") == "nothing to hide"


def test_token_from_env_and_file(small_model_dir, tmp_path, monkeypatch):
    from lore_rm.serve.app import build_app

    monkeypatch.setenv("LORE_SERVE_TOKEN", "from-env")
    app = build_app(str(small_model_dir), "hashing-64", db=str(tmp_path / "a.sqlite"))
    with LiveServer(app) as url:
        assert httpx.get(url + "/model-info").status_code == 401
        assert (
            httpx.get(url + "/model-info", headers={"Authorization": "Bearer from-env"}).status_code
            == 200
        )
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    app = build_app(
        str(small_model_dir),
        "hashing-64",
        db=str(tmp_path / "b.sqlite"),
        token_file=str(token_file),
    )
    with LiveServer(app) as url:
        assert (
            httpx.get(
                url + "/model-info", headers={"Authorization": "Bearer from-file"}
            ).status_code
            == 200
        )
        assert (
            httpx.get(url + "/model-info", headers={"Authorization": "Bearer from-env"}).status_code
            == 401
        )
    monkeypatch.delenv("LORE_SERVE_TOKEN")
    app = build_app(str(small_model_dir), "hashing-64", db=str(tmp_path / "c.sqlite"))
    with LiveServer(app) as url:
        assert httpx.get(url + "/model-info").status_code == 200


# ---- onboarding, persistence ------------------------------------------------------------------
def test_onboarding_changes_rewards_and_survives_restart(small_model, embedder, tmp_path):
    db = tmp_path / "db.sqlite"
    probe = [
        conversation("what now", "winter river quiet"),
        conversation("what now", "sunny tiger funny"),
    ]
    with (
        LiveServer(create_app(small_model, embedder, db)) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        before = client.post("/reward", json={"user": "carol", "conversations": probe}).json()
        assert before["known"] == [False, False]
        assert client.get("/users/carol").json()["source"] == "population-mean"

        first = client.post("/users/carol/comparisons", json=onboarding_body(6, flip=True))
        assert first.status_code == 200, first.text
        first = first.json()
        assert first["new_user"] is True and first["added"] == 6 and first["total"] == 6
        assert first["n_fit"] == 6
        after = client.post("/reward", json={"user": "carol", "conversations": probe}).json()
        assert after["known"] == [True, True]
        assert after["rewards"] != pytest.approx(before["rewards"], abs=1e-6)

        second = client.post(
            "/users/carol/comparisons", json=onboarding_body(4, flip=True, offset=100)
        ).json()
        assert second["new_user"] is False and second["total"] == 10 and second["n_fit"] == 10
        info = client.get("/users/carol").json()
        assert info["source"] == "onboarded" and info["n_comparisons"] == 10
        assert info["weights"] == second["weights"]
        served_rewards = client.post(
            "/reward", json={"user": "carol", "conversations": probe}
        ).json()["rewards"]

    # the served weights are personalize() on all 10 stored comparisons, basis frozen
    items = (
        onboarding_body(6, flip=True)["comparisons"]
        + onboarding_body(4, flip=True, offset=100)["comparisons"]
    )
    ch = embedder.embed([conversation(c["prompt"], c["chosen"]) for c in items])
    rj = embedder.embed([conversation(c["prompt"], c["rejected"]) for c in items])
    ref = small_model.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.personalize(Comparisons.from_features(ch - rj, ["carol"] * 10))
    np.testing.assert_allclose(
        info["weights"], ref.weights_for(["carol"])[0][0].numpy(), rtol=1e-5, atol=1e-6
    )
    assert small_model.weights_for(["carol"], unknown="mean")[1].tolist() == [False]  # untouched

    # restart on the same database: exactly the same weights and rewards
    with (
        LiveServer(
            create_app(LowRankReward.from_pretrained(_dir_of(small_model, tmp_path)), embedder, db)
        ) as url,
        httpx.Client(base_url=url) as client,
    ):
        again = client.get("/users/carol").json()
        assert again["weights"] == info["weights"] and again["n_fit"] == 10
        assert (
            client.post("/reward", json={"user": "carol", "conversations": probe}).json()["rewards"]
            == served_rewards
        )


def _dir_of(model: LowRankReward, tmp_path):
    path = tmp_path / "model-copy"
    model.save_pretrained(path)
    return path


def test_seen_user_refit_and_second_server_sees_it(small_model, embedder, tmp_path):
    db = tmp_path / "db.sqlite"
    a = create_app(small_model, embedder, db)
    b = create_app(small_model, embedder, db)  # another process's view of the same file
    probe = [conversation("q", "winter river quiet")]
    with LiveServer(a) as url_a, LiveServer(b) as url_b:
        before = httpx.post(
            url_b + "/reward", json={"user": "seen1", "conversations": probe}
        ).json()
        assert before["known"] == [True]
        out = httpx.post(
            url_a + "/users/seen1/comparisons", json=onboarding_body(5), timeout=30
        ).json()
        assert out["new_user"] is False
        after_b = httpx.post(
            url_b + "/reward", json={"user": "seen1", "conversations": probe}
        ).json()
        after_a = httpx.post(
            url_a + "/reward", json={"user": "seen1", "conversations": probe}
        ).json()
        assert after_b["rewards"] == after_a["rewards"] != before["rewards"]
        assert httpx.get(url_b + "/users/seen1").json()["source"] == "onboarded"


def test_concurrent_onboarding_loses_nothing(small_model, embedder, tmp_path):
    db = tmp_path / "db.sqlite"
    app = create_app(small_model, embedder, db)
    posts_per_thread, threads, per_post = 4, 6, 3
    errors: list[str] = []

    def worker(t: int, url: str) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            for k in range(posts_per_thread):
                user = f"new{t % 3}"
                r = client.post(
                    f"/users/{user}/comparisons",
                    json=onboarding_body(per_post, offset=1000 * t + 10 * k),
                )
                if r.status_code != 200:
                    errors.append(r.text)

    with LiveServer(app) as url:
        pool = [threading.Thread(target=worker, args=(t, url)) for t in range(threads)]
        for th in pool:
            th.start()
        for th in pool:
            th.join(timeout=120)
        infos = [httpx.get(f"{url}/users/new{i}").json() for i in range(3)]
    assert not errors
    store = Store(db)
    assert store.count_comparisons() == posts_per_thread * threads * per_post
    for i, info in enumerate(infos):
        n = store.count_comparisons(f"new{i}")
        assert n == posts_per_thread * 2 * per_post
        assert info["n_fit"] == n  # the served weights use every stored comparison
        assert store.user_record(f"new{i}")[1] == n
    store.close()


def test_crash_between_store_and_refit_is_repaired(small_model, embedder, tmp_path):
    db = tmp_path / "db.sqlite"
    svc = RewardService(small_model, embedder, db)
    convs = [(conversation("p", "winter river"), conversation("p", "sunny tiger"))] * 3
    raw = [
        StoredComparison(
            [{"role": "user", "content": "p"}],
            [{"role": "assistant", "content": "winter river"}],
            [{"role": "assistant", "content": "sunny tiger"}],
        )
    ] * 3
    svc.onboard("dave", convs, raw)
    # comparisons committed, then the process dies before the weights are written
    x = (embedder.embed([c for c, _ in convs]) - embedder.embed([r for _, r in convs])).numpy()
    svc.store.add_comparisons("dave", raw, x)
    assert svc.store.stale_users() == ["dave"]
    svc.close()
    again = RewardService(small_model, embedder, db)
    assert again.store.stale_users() == []
    assert again.user_info("dave")["n_fit"] == 6
    again.close()


def test_database_of_another_model_is_refused(small_model, embedder, tmp_path):
    db = tmp_path / "db.sqlite"
    RewardService(small_model, embedder, db).close()
    other = LowRankReward.from_arrays(
        small_model.basis_ + 1.0,
        small_model.user_weights_,
        small_model.users_,
        scale=small_model.scale_,
        reference_head=small_model.reference_head_,
    )
    with pytest.raises(ModelFormatError, match="model_fingerprint"):
        RewardService(other, embedder, db)
    with pytest.raises(ModelFormatError, match="d = 32"):
        RewardService(small_model, HashingEmbedder(32), tmp_path / "x.sqlite")


def test_rank_zero_model_serves_reference_head(small_model, embedder, tmp_path):
    ref = small_model.reference_head_
    m = LowRankReward.from_arrays(  # rank 0: the reference head as a one-column basis
        ref[:, None], torch.ones(len(small_model.users_), 1), small_model.users_, rank=0
    )
    convs = [conversation("p", "apple"), conversation("p", "tiger")]
    with LiveServer(create_app(m, embedder, tmp_path / "db.sqlite")) as url:
        out = httpx.post(url + "/reward", json={"user": "seen1", "conversations": convs}).json()
    want = (embedder.embed(convs) @ ref).numpy()
    np.testing.assert_allclose(out["rewards"], want, rtol=1e-5)


@pytest.mark.slow
def test_lore_serve_command(small_model_dir, tmp_path):
    """`lore serve MODEL_DIR --backbone hashing-64` in a subprocess, token from a file."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    db = tmp_path / "cli.sqlite"
    proc, url = start_lore_serve(
        small_model_dir, db, "--token-file", str(token_file), "--micro-batch", "16",
        "--max-wait-ms", "1.5", "--chunk-ms", "300",
    )  # fmt: skip
    try:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(url + "/model-info").status_code == 401
        info = httpx.get(url + "/model-info", headers=auth).json()
        assert info["embedder"] == "hashing-64"
        assert info["batching"] == {"max_texts": 16, "max_wait_ms": 1.5, "chunk_ms": 300.0}
        out = httpx.post(
            url + "/users/erin/comparisons", headers=auth, json=onboarding_body(2), timeout=30
        )
        assert out.status_code == 200 and out.json()["total"] == 2
    finally:
        stop_lore_serve(proc)
    assert Store(db).count_comparisons("erin") == 2


def test_lore_serve_rejects_bad_backbone(small_model_dir, tmp_path):
    from typer.testing import CliRunner

    from lore_rm.cli import app as cli_app

    result = CliRunner().invoke(
        cli_app,
        [
            "serve",
            str(small_model_dir),
            "--backbone",
            "hashing-32",
            "--db",
            str(tmp_path / "d.sqlite"),
        ],
    )
    assert result.exit_code == 2 and "d = 32" in result.output


def test_label_key_labels_without_the_key_are_unknown_users_flagged(
    small_model, embedder, tmp_path
):
    """With --label-key, a label object without the key or a plain-string label was a 422,
    and OpenRLHF dropped the sample (up to 0.9.0: the whole batch)."""
    app = create_app(
        small_model, embedder, tmp_path / "db.sqlite", query_format=QueryFormat(label_key="uid")
    )
    labels = [{"uid": "seen1"}, json.dumps({"uid": "seen2"}), {"other": 1}, "seen3", "not json",
              {"uid": None}]  # fmt: skip
    body = {"query": ["q a"] * len(labels), "prompts": ["q "] * len(labels), "labels": labels}
    with LiveServer(app) as url, httpx.Client(base_url=url) as client:
        out = client.post("/get_reward", json=body)
        assert out.status_code == 200, out.text
        logs = out.json()["extra_logs"]
        bad = client.post("/get_reward", json={"query": ["x"], "labels": [{"uid": [1, 2]}]})
    assert logs["lore_unknown_user"] == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert logs["lore_bad_label"] == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    rewards = out.json()["rewards"]
    assert rewards[2] == rewards[3] == rewards[4] == rewards[5]  # the population's weights
    assert bad.status_code == 422  # a key holding no user id is still a client error

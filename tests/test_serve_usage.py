"""Best-of-N, group choice and users' control of their data, through a live uvicorn."""

from __future__ import annotations

import json
import sqlite3
import time

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
)

from lore_rm import LowRankReward
from lore_rm.embed.hashing import HashingEmbedder
from lore_rm.serve import Limits, create_app
from lore_rm.serve.export import load_with_served_users


@pytest.fixture()
def small_model() -> LowRankReward:
    return LowRankReward.from_pretrained(shared_model_dir())


@pytest.fixture()
def served(small_model, tmp_path):
    app = create_app(small_model, HashingEmbedder(D), tmp_path / "db.sqlite")
    with LiveServer(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def onboard(client, user: str, n: int = 6, tag: str = "") -> dict:
    items = [
        {
            "prompt": f"tell me about topic {i}",
            "chosen": f"winter river quiet {tag}{i}",
            "rejected": f"sunny tiger funny {tag}{i}",
        }
        for i in range(n)
    ]
    out = client.post(f"/users/{user}/comparisons", json={"comparisons": items})
    assert out.status_code == 200, out.text
    return out.json()


RESPONSES = ["winter river quiet", "sunny tiger funny", "ocean piano", "night", "ocean piano"]


# ---- best of N ---------------------------------------------------------------------------------
@pytest.mark.parametrize("user", ["seen1", "carol", "nobody-knows-me"])
def test_rank_rewards_equal_reward_and_best_first(served, user):
    if user == "carol":
        onboard(served, "carol")
    body = {"user": user, "prompt": "what now", "responses": RESPONSES}
    got = served.post("/rank", json=body)
    assert got.status_code == 200, got.text
    got = got.json()
    convs = [conversation("what now", r) for r in RESPONSES]
    want = served.post("/reward", json={"user": user, "conversations": convs}).json()
    assert got["rewards"] == want["rewards"]  # the same path: equal, not close
    assert got["known"] == (user != "nobody-knows-me") == want["known"][0]
    r = np.array(got["rewards"])
    assert sorted(got["ranking"]) == list(range(len(RESPONSES)))
    assert np.all(np.diff(r[got["ranking"]]) <= 0)  # best first
    assert got["best"] == got["ranking"][0] == int(np.argmax(r))
    # the duplicated response ties; ties keep the posted order
    assert got["ranking"].index(2) < got["ranking"].index(4)
    if user == "seen1":  # a seen user of the model folder: no posterior, no interval
        assert got["lower"] is None and got["upper"] is None and got["uncertain"] is None
    else:  # onboarded: their posterior; unknown: the prior around the population
        lo, hi = np.array(got["lower"]), np.array(got["upper"])
        assert np.all(lo <= r) and np.all(r <= hi) and np.all(hi - lo > 0)
        first, second = got["ranking"][:2]
        assert got["uncertain"] == bool(lo[first] <= hi[second])


def test_rank_intervals_shrink_with_answers_and_follow_the_level(served):
    body = {"user": "dave", "prompt": "what now", "responses": RESPONSES[:4]}
    prior = served.post("/rank", json=body).json()
    onboard(served, "dave", n=12)
    after = served.post("/rank", json=body).json()
    wide = np.subtract(prior["upper"], prior["lower"])
    narrow = np.subtract(after["upper"], after["lower"])
    assert np.all(narrow < wide)
    at50 = served.post("/rank", json={**body, "level": 0.5}).json()
    ratio = np.subtract(at50["upper"], at50["lower"]) / narrow
    np.testing.assert_allclose(ratio, 0.6745 / 1.6449, rtol=1e-3)  # z(0.5) / z(0.9)


def test_rank_batch_form(served):
    onboard(served, "erin")
    items = [
        {"prompt": "what now", "responses": RESPONSES},
        {"user": "seen2", "prompt": [{"role": "user", "content": "hi"}], "responses": ["a b", "c"]},
        {"prompt": "q", "responses": [[{"role": "assistant", "content": "night ocean"}]]},
    ]
    out = served.post("/rank", json={"user": "erin", "items": items})
    assert out.status_code == 200, out.text
    results = out.json()["results"]
    assert [r["user"] for r in results] == ["erin", "seen2", "erin"]
    for item, res in zip(items, results, strict=True):
        single = served.post("/rank", json={"user": res["user"], **item}).json()
        assert single["rewards"] == res["rewards"] and single["ranking"] == res["ranking"]
        assert single["lower"] == res["lower"]
    assert results[2]["ranking"] == [0] and results[2]["uncertain"] is False


def test_model_rank_candidates_matches_the_service(served, small_model):
    emb = HashingEmbedder(D)
    e = emb.embed([conversation("what now", r) for r in RESPONSES])
    got = served.post(
        "/rank", json={"user": "seen3", "prompt": "what now", "responses": RESPONSES}
    ).json()
    mine = small_model.rank_candidates(e, "seen3")
    assert mine.ranking == got["ranking"] and mine.best == got["best"]
    np.testing.assert_allclose(mine.rewards, got["rewards"], rtol=1e-6, atol=1e-7)
    post = small_model.weights_posterior(users=["seen3", "ghost"], unknown="mean")
    both = small_model.rank_candidates(
        [e, e[:2]], ["seen3", "ghost"], posterior=post, unknown="mean"
    )
    assert [r.known for r in both] == [True, False] and both[1].lower is not None


# ---- group choice: a hand-checked example -------------------------------------------------------
class TableEmbedder:
    """d = 3: each response text has a fixed embedding (the prompt is ignored)."""

    name = "table-3"
    dim = 3

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def embed(self, conversations, **_):
        rows = [self.table.get(c[-1]["content"], [0.0, 0.0, 0.0]) for c in conversations]
        return torch.tensor(rows)

    def reference_head(self):
        return None


# rewards: u1 = (3, 2, 1, 2), u2 = (1, 3, 2, 3), u3 = (2, 1, 3, 1); "beta" is posted twice
TABLE = {"alpha": [3.0, 1.0, 2.0], "beta": [2.0, 3.0, 1.0], "gamma": [1.0, 2.0, 3.0]}
HAND = {  # scores worked out by hand (docs/serving.md shows the same example)
    "borda": ([5.0, 4.5, 4.0, 4.5], [[0], [1, 3], [2]]),
    "plurality": ([1.0, 0.5, 1.0, 0.5], [[0, 2], [1, 3]]),
    "copeland": ([2.0, 1.5, 1.0, 1.5], [[0], [1, 3], [2]]),
}


@pytest.fixture()
def group_server(tmp_path):
    model = LowRankReward.from_arrays(torch.eye(3), torch.eye(3), ["u1", "u2", "u3"])
    app = create_app(model, TableEmbedder(TABLE), tmp_path / "g.sqlite")
    with LiveServer(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


@pytest.mark.parametrize("rule", sorted(HAND))
def test_group_rank_hand_checked(group_server, rule):
    body = {
        "users": ["u1", "u2", "u3"],
        "prompt": "pick one",
        "responses": ["alpha", "beta", "gamma", "beta"],
        "rule": rule,
    }
    out = group_server.post("/group-rank", json=body)
    assert out.status_code == 200, out.text
    out = out.json()
    scores, ranking = HAND[rule]
    assert out["aggregate"]["scores"] == pytest.approx(scores)
    assert out["aggregate"]["ranking"] == ranking
    assert out["aggregate"]["winners"] == ranking[0]
    assert [u["ranking"] for u in out["users"]] == [
        [[0], [1, 3], [2]],
        [[1, 3], [2], [0]],
        [[2], [0], [1, 3]],
    ]
    assert out["users"][0]["rewards"] == pytest.approx([3.0, 2.0, 1.0, 2.0])
    assert out["n_unknown"] == 0
    # each member's rewards are /reward's for the same conversations
    convs = [conversation("pick one", r) for r in body["responses"]]
    for member in out["users"]:
        want = group_server.post("/reward", json={"user": member["user"], "conversations": convs})
        assert member["rewards"] == pytest.approx(want.json()["rewards"], abs=1e-6)


def test_group_rank_with_unknown_users(served):
    body = {"users": ["seen1", "ghost"], "prompt": "q", "responses": RESPONSES}
    out = served.post("/group-rank", json=body).json()
    assert out["n_unknown"] == 1 and [u["known"] for u in out["users"]] == [True, False]


# ---- users' data ---------------------------------------------------------------------------------
def test_user_data_and_listing(served, small_model):
    onboard(served, "fay", n=3)
    data = served.get("/users/fay/data").json()
    assert data["source"] == "onboarded" and data["n_comparisons"] == 3
    assert [c["chosen"][0]["content"] for c in data["comparisons"]] == [
        f"winter river quiet {i}" for i in range(3)
    ]
    assert "x" not in data["comparisons"][0] or data["comparisons"][0]["x"] is None
    page = served.get("/users/fay/data", params={"offset": 1, "limit": 1, "features": True})
    page = page.json()
    assert len(page["comparisons"]) == 1 and len(page["comparisons"][0]["x"]) == D
    assert served.get("/users/seen0/data").json()["source"] == "model"

    n = len(small_model.users_) + 1
    listed = served.get("/users", params={"limit": 5}).json()
    assert listed["total"] == n and len(listed["users"]) == 5 and listed["next_offset"] == 5
    rest = served.get("/users", params={"offset": 5, "limit": 1000}).json()
    everyone = [u["user"] for u in listed["users"] + rest["users"]]
    assert everyone == [*small_model.users_, "fay"] and rest["next_offset"] is None
    assert rest["users"][-1] == {"user": "fay", "source": "onboarded", "n_comparisons": 3}


# ---- deletion ----------------------------------------------------------------------------
def _db_bytes(db) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*") if p.is_file())


@pytest.mark.slow
def test_delete_then_restart_forgets_the_user_and_their_texts(tmp_path):
    model_dir = shared_model_dir()
    db = tmp_path / "db.sqlite"
    secret = "zebra umbrella secret-phrase"
    long_text = "violet harbor " * 400  # several pages: SQLite overflow pages
    proc, url = start_lore_serve(model_dir, db)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            onboard(client, "gina", n=4, tag=secret + " ")
            onboard(client, "hank", n=3, tag="keep-me ")
            big = {"prompt": long_text, "chosen": "a " + secret, "rejected": "b"}
            client.post("/users/gina/comparisons", json={"comparisons": [big]})
            onboard(client, "seen1", n=3, tag=secret + "-seen ")
            probe = [conversation("what now", r) for r in RESPONSES]
            before = client.post("/reward", json={"user": "seen1", "conversations": probe})
            assert before.json()["known"] == [True] * len(RESPONSES)
            assert secret.encode() in _db_bytes(db)

            for user, was in (("gina", "onboarded"), ("seen1", "onboarded")):
                out = client.delete(f"/users/{user}")
                assert out.status_code == 200, out.text
                assert out.json()["was"] == was and out.json()["scrubbed"] is True
            assert client.delete("/users/gina").status_code == 404  # already gone
            # a seen user deleted a second time: no stored rows, weights from the folder
            out = client.delete("/users/seen2").json()
            assert out["was"] == "model" and out["comparisons"] == 0
            for user in ("gina", "seen1", "seen2"):
                got = client.post("/reward", json={"user": user, "conversations": probe}).json()
                assert got["known"] == [False] * len(RESPONSES)
    finally:
        stop_lore_serve(proc)
    raw = _db_bytes(db)
    assert secret.encode() not in raw and b"violet harbor" not in raw
    assert b"gina" not in raw  # the id is kept only as a hash
    assert b"keep-me" in raw  # other users' data stays

    proc, url = start_lore_serve(model_dir, db)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            for user in ("gina", "seen1", "seen2"):
                info = client.get(f"/users/{user}").json()
                assert info["known"] is False and info["source"] == "population-mean"
                assert client.get(f"/users/{user}/data").status_code == 404
            assert client.get("/users/hank").json()["n_comparisons"] == 3
            listed = [u["user"] for u in client.get("/users").json()["users"]]
            assert "seen1" not in listed and "seen2" not in listed and "hank" in listed
            # the user can come back: new comparisons, new weights
            assert onboard(client, "seen1", n=2)["new_user"] is True
            assert client.get("/users/seen1").json()["source"] == "onboarded"
    finally:
        stop_lore_serve(proc)
    # offline readers (lore score, export, rewardbench) see the deletion too
    model, _, _ = load_with_served_users(model_dir, db)
    assert "seen2" not in model.users_ and "seen1" in model.users_ and "gina" not in model.users_


def test_a_deletion_reaches_another_server_on_the_same_database(small_model, tmp_path):
    db = tmp_path / "db.sqlite"
    emb = HashingEmbedder(D)
    a, b = create_app(small_model, emb, db), create_app(small_model, emb, db)
    probe = [conversation("q", "winter river quiet")]
    with LiveServer(a) as url_a, LiveServer(b) as url_b:
        with httpx.Client(base_url=url_a) as ca, httpx.Client(base_url=url_b) as cb:
            onboard(ca, "ivy")
            assert cb.post("/reward", json={"user": "ivy", "conversations": probe}).json()[
                "known"
            ] == [True]
            assert ca.delete("/users/ivy").status_code == 200
            assert ca.delete("/users/seen4").status_code == 200
            for user in ("ivy", "seen4"):
                got = cb.post("/reward", json={"user": user, "conversations": probe}).json()
                assert got["known"] == [False]
            # onboarding again after the deletion counts from zero, in both servers
            assert onboard(cb, "ivy", n=2)["total"] == 2
            assert ca.get("/users/ivy").json()["n_fit"] == 2
    # the version counter never goes back: a weight written after a deletion is seen
    conn = sqlite3.connect(db)
    (users_max,) = conn.execute("SELECT MAX(seq) FROM users").fetchone()
    (deleted_max,) = conn.execute("SELECT MAX(seq) FROM deletions").fetchone()
    assert users_max > deleted_max


# ---- bad input: 4xx, quickly ---------------------------------------------------------------
BAD = [
    ("post", "/rank", {}, 422),
    ("post", "/rank", {"prompt": "q"}, 422),
    ("post", "/rank", {"prompt": "q", "responses": []}, 422),
    ("post", "/rank", {"prompt": "q", "responses": ["a"], "items": []}, 422),
    ("post", "/rank", {"prompt": "q", "responses": ["a"], "level": 1.0}, 422),
    ("post", "/rank", {"prompt": "q", "responses": ["a"], "user": ""}, 422),
    ("post", "/rank", {"prompt": "q", "responses": [7]}, 422),
    ("post", "/rank", {"prompt": "q", "responses": ["a\ud800"]}, 422),
    ("post", "/rank", {"prompt": "q", "responses": [[{"role": "user", "content": "x"}]]}, 422),
    ("post", "/rank", {"items": [{"prompt": "q", "responses": ["a"], "extra": 1}]}, 422),
    ("post", "/rank", {"prompt": "q", "responses": ["a"] * 9}, 413),
    ("post", "/rank", {"items": [{"prompt": "q", "responses": ["a"] * 5}] * 2}, 413),
    ("post", "/group-rank", {"users": [], "prompt": "q", "responses": ["a"]}, 422),
    ("post", "/group-rank", {"users": ["a", "a"], "prompt": "q", "responses": ["a"]}, 422),
    ("post", "/group-rank", {"users": ["a"], "prompt": "q", "responses": ["a"], "rule": "x"}, 422),
    ("post", "/group-rank", {"users": ["a"] * 9, "prompt": "q", "responses": ["a"]}, 413),
    ("post", "/group-rank", {"users": ["a"], "prompt": "q", "responses": ["a"] * 9}, 413),
    ("delete", "/users/nobody", None, 404),
    ("get", "/users/nobody/data", None, 404),
    ("get", "/users/seen0/data?limit=0", None, 422),
    ("get", "/users/seen0/data?offset=-1", None, 422),
    ("get", "/users?limit=1001", None, 422),
    ("get", "/users?offset=abc", None, 422),
    ("delete", "/users/" + "x" * 300, None, 422),
]


def test_bad_input_is_4xx_in_bounded_time(small_model, tmp_path):
    app = create_app(
        small_model, HashingEmbedder(D), tmp_path / "db.sqlite", limits=Limits(max_batch=8)
    )
    with LiveServer(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        for method, path, body, status in BAD:
            start = time.monotonic()
            raw = None if body is None else json.dumps(body).encode()  # "\\ud800" escaped
            out = client.request(
                method.upper(), path, content=raw, headers={"content-type": "application/json"}
            )
            assert out.status_code == status, (path, body, out.text)
            assert time.monotonic() - start < 5, (path, body)
        loc = client.post("/rank", json={"prompt": "q", "responses": ["a", 7]}).json()
        assert loc["detail"][0]["loc"][:3] == ["body", "responses", 1]


@pytest.mark.slow
def test_no_user_id_is_logged_next_to_prompt_text(tmp_path):
    """lore serve at its default log level (info, access log on): the access log names a
    user only in /users/{id} paths, and no line holds a user id and a prompt text."""
    secret = "quiet harbor confession"
    user = "user-4711"
    proc, url = start_lore_serve(shared_model_dir(), tmp_path / "db.sqlite", "--log-level", "info")
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            onboard(client, user, n=2, tag=secret + " ")
            convs = [conversation(secret, "winter river")]
            client.post("/reward", json={"user": user, "conversations": convs})
            client.post("/get_reward", json={"query": [secret + " x"], "labels": [user]})
            client.post("/rank", json={"user": user, "prompt": secret, "responses": ["a", "b"]})
            client.post("/group-rank", json={"users": [user], "prompt": secret, "responses": ["a"]})
            client.get(f"/users/{user}/data")
            bad = {"comparisons": [{"prompt": secret, "chosen": "same", "rejected": "same"}]}
            assert client.post(f"/users/{user}/comparisons", json=bad).status_code == 422
            client.delete(f"/users/{user}")
    finally:
        stop_lore_serve(proc)
    log = proc.stdout.read().decode()
    assert f"/users/{user}" in log  # the access log is on
    for line in log.splitlines():
        assert not (user in line and "harbor" in line), line
    assert "harbor" not in log


def test_rank_intervals_are_the_models_reward_std(small_model, tmp_path):
    """The service's intervals are LowRankReward.reward's std under the user's posterior
    (personalisation strength included), z-scaled."""
    app = create_app(small_model, HashingEmbedder(D), tmp_path / "db.sqlite")
    with LiveServer(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        onboard(client, "olga", n=5)
        got = client.post(
            "/rank", json={"user": "olga", "prompt": "what now", "responses": RESPONSES}
        ).json()
        view, post, _ = app.state.service._user_posterior("olga")
    e = HashingEmbedder(D).embed([conversation("what now", r) for r in RESPONSES])
    r, std = view.reward(e, "olga", return_std=True, posterior=post)
    np.testing.assert_allclose(got["rewards"], r.double().numpy(), rtol=1e-6)
    half = np.subtract(got["upper"], got["rewards"])
    np.testing.assert_allclose(half, 1.6448536 * std.double().numpy(), rtol=1e-4)

"""Active questions and posteriors in the service, against a real uvicorn server on loopback."""

from __future__ import annotations

import json
import threading
import warnings

import httpx
import numpy as np
import pytest
import torch
from serve_utils import D, LiveServer, conversation, fit_small_model, shared_model_dir

from lore_rm import Comparisons, LowRankReward
from lore_rm.embed.hashing import HashingEmbedder
from lore_rm.serve import Limits, create_app


class CountingEmbedder(HashingEmbedder):
    """The hashing stand-in, counting the conversations it embeds."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.n_embedded = 0

    def embed(self, conversations):
        self.n_embedded += len(conversations)
        return super().embed(conversations)


def candidates(n: int, offset: int = 0) -> list[dict]:
    words = "winter river quiet sunny tiger funny ocean piano violet zebra".split()
    return [
        {
            "prompt": f"tell me about topic {i + offset}",
            "response_a": f"{words[i % 10]} {words[(3 * i + 1) % 10]} {i + offset}",
            "response_b": f"{words[(7 * i + 2) % 10]} long brief {i + offset}",
        }
        for i in range(n)
    ]


def candidate_features(emb, items: list[dict]) -> np.ndarray:
    a = emb.embed([conversation(c["prompt"], c["response_a"]) for c in items])
    b = emb.embed([conversation(c["prompt"], c["response_b"]) for c in items])
    return (torch.as_tensor(a) - torch.as_tensor(b)).numpy()


def answers(n: int) -> list[dict]:
    return [
        {"prompt": f"question {i}", "chosen": f"winter quiet {i}", "rejected": f"sunny rude {i}"}
        for i in range(n)
    ]


@pytest.fixture()
def small_model() -> LowRankReward:
    return LowRankReward.from_pretrained(shared_model_dir())


@pytest.fixture()
def embedder() -> CountingEmbedder:
    return CountingEmbedder(D)


@pytest.fixture()
def served(small_model, embedder, tmp_path):
    app = create_app(
        small_model, embedder, tmp_path / "db.sqlite", limits=Limits(max_candidates=40)
    )
    with LiveServer(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def test_unknown_user_gets_the_prior_and_the_library_choice(served, small_model, embedder):
    client = served
    pool = candidates(12)
    out = client.post("/users/newbie/next-questions", json={"candidates": pool, "n": 4})
    assert out.status_code == 200, out.text
    body = out.json()
    assert (body["known"], body["n_answers"], body["prior"]) == (False, 0, "learned")
    got = body["questions"]
    index = [q["index"] for q in got]
    assert len(index) == 4 and len(set(index)) == 4
    gains = [q["information_gain"] for q in got]
    assert all(g1 >= g2 for g1, g2 in zip(gains, gains[1:], strict=False)) and gains[-1] > 0
    for q in got:  # each question is echoed as posted
        assert {k: q[k] for k in ("prompt", "response_a", "response_b")} == pool[q["index"]]

    x = candidate_features(embedder, pool)
    sel = small_model.select_questions(Comparisons.from_features(x, ["newbie"] * 12), 4)
    assert index == sel.rows[0].tolist()
    np.testing.assert_allclose(gains, sel.scores[0].numpy(), rtol=1e-5)

    info = client.get("/users/newbie").json()
    post = info["posterior"]
    assert post["n_answers"] == 0 and post["prior"] == "learned"
    assert post["weights"] == info["weights"]  # the population's, as served
    prior = small_model.weights_posterior(users=["newbie"], unknown="mean")
    np.testing.assert_allclose(post["weights_std"], prior.weights_std()[0].numpy(), rtol=1e-6)


def test_onboarding_tightens_the_posterior_and_skips_answered_pairs(served, small_model, embedder):
    client = served
    before = client.get("/users/alice").json()["posterior"]
    body = {"comparisons": answers(8)}
    assert client.post("/users/alice/comparisons", json=body).status_code == 200
    info = client.get("/users/alice").json()
    post = info["posterior"]
    assert (info["n_comparisons"], post["n_answers"]) == (8, 8)
    assert post["weights"] == info["weights"]
    assert all(a < b for a, b in zip(post["weights_std"], before["weights_std"], strict=True))

    # the same posterior as the library's over the same comparisons
    chosen = embedder.embed([conversation(c["prompt"], c["chosen"]) for c in answers(8)])
    rejected = embedder.embed([conversation(c["prompt"], c["rejected"]) for c in answers(8)])
    comps = Comparisons.from_features(
        torch.as_tensor(chosen) - torch.as_tensor(rejected), ["alice"] * 8
    )
    model = small_model.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.personalize(comps)
    expected = model.weights_posterior(comps)
    np.testing.assert_allclose(post["weights"], expected.weights[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(post["weights_std"], expected.weights_std()[0].numpy(), rtol=1e-3)

    # an answered comparison offered again (either orientation) is never asked again
    pool = candidates(5) + [
        {"prompt": "question 2", "response_a": "sunny rude 2", "response_b": "winter quiet 2"}
    ]
    out = client.post("/users/alice/next-questions", json={"candidates": pool, "n": 6}).json()
    assert out["n_answers"] == 8 and out["known"]
    assert sorted(q["index"] for q in out["questions"]) == [0, 1, 2, 3, 4]
    x = candidate_features(embedder, pool)
    sel = model.select_questions(
        Comparisons.from_features(x, ["alice"] * 6), 6, posterior=expected, asked=comps
    )
    assert [q["index"] for q in out["questions"]] == sel.flat().tolist()
    np.testing.assert_allclose(
        [q["information_gain"] for q in out["questions"]],
        sel.scores[0][:5].numpy(),
        rtol=1e-3,
    )


def test_seen_user_without_answers_has_no_reported_posterior(served, small_model, embedder):
    """The folder keeps no training data: no posterior to report; questions use the prior's
    covariance around the fitted weights (select_questions' own default)."""
    client = served
    user = small_model.users_[0]
    info = client.get(f"/users/{user}").json()
    assert info["source"] == "model" and info["posterior"] is None
    pool = candidates(8)
    out = client.post(f"/users/{user}/next-questions", json={"candidates": pool, "n": 3}).json()
    assert (out["known"], out["n_answers"]) == (True, 0)
    x = candidate_features(embedder, pool)
    sel = small_model.select_questions(Comparisons.from_features(x, [user] * 8), 3)
    assert [q["index"] for q in out["questions"]] == sel.rows[0].tolist()


@pytest.mark.parametrize(
    ("body", "loc", "status"),
    [
        ({"candidates": [], "n": 1}, ["body", "candidates"], 422),
        ({"candidates": candidates(3), "n": 4}, ["body", "n"], 422),
        ({"candidates": candidates(3), "n": 0}, ["body", "n"], 422),
        ({"candidates": candidates(3), "n": 1.5}, ["body", "n"], 422),
        ({"candidates": candidates(3), "n": "2"}, ["body", "n"], 422),
        ({"candidates": candidates(3), "n": True}, ["body", "n"], 422),
        ({"candidates": {"prompt": "p"}, "n": 1}, ["body", "candidates"], 422),
        ({"candidates": [["p", "a", "b"]], "n": 1}, ["body", "candidates", 0], 422),
        (
            {"candidates": [{"prompt": "p", "chosen": "a", "rejected": "b"}], "n": 1},
            ["body", "candidates", 0],
            422,
        ),
        (
            {
                "candidates": [
                    *candidates(2),
                    {"prompt": "p", "response_a": "same", "response_b": "same"},
                ]
            },
            ["body", "candidates", 2],
            422,
        ),
        (
            {"candidates": [{"prompt": " ", "response_a": "a", "response_b": "b"}], "n": 1},
            ["body", "candidates", 0],
            422,
        ),
        (
            {"candidates": [{"prompt": "p", "response_a": "a\ud800", "response_b": "b"}], "n": 1},
            ["body", "candidates", 0, "response_a"],
            422,
        ),
        ({"candidates": candidates(41), "n": 1}, ["body", "candidates"], 413),
    ],
)
def test_bad_candidates_are_refused_before_embedding(served, embedder, body, loc, status):
    client = served
    warmed = embedder.n_embedded  # the service's warm-up
    raw = json.dumps(body).encode()  # a lone surrogate goes on the wire as "\\ud800"
    out = client.post(
        "/users/bob/next-questions", content=raw, headers={"content-type": "application/json"}
    )
    assert out.status_code == status, out.text
    detail = out.json()["detail"]
    assert any(d["loc"][: len(loc)] == loc for d in detail), detail
    assert embedder.n_embedded == warmed  # refused before the backbone ran
    assert client.get("/users/bob").json()["n_comparisons"] == 0


def test_questions_on_the_tiny_llama_backbone(tiny_backbone, tmp_path):
    """The whole loop over a transformers backbone: questions for a new user, their answers,
    the tighter posterior, the next questions."""
    model = fit_small_model(embedder=tiny_backbone)
    app = create_app(model, tiny_backbone, tmp_path / "db.sqlite")
    pool = candidates(6)
    with LiveServer(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        first = client.post("/users/carol/next-questions", json={"candidates": pool, "n": 2})
        assert first.status_code == 200, first.text
        asked = first.json()["questions"]
        x = candidate_features(tiny_backbone, pool)
        sel = model.select_questions(Comparisons.from_features(x, ["carol"] * 6), 2)
        assert [q["index"] for q in asked] == sel.rows[0].tolist()
        np.testing.assert_allclose(
            [q["information_gain"] for q in asked], sel.scores[0].numpy(), rtol=1e-4
        )
        prior_std = client.get("/users/carol").json()["posterior"]["weights_std"]
        answered = [
            {"prompt": q["prompt"], "chosen": q["response_a"], "rejected": q["response_b"]}
            for q in asked
        ]
        onboard = client.post("/users/carol/comparisons", json={"comparisons": answered})
        assert onboard.status_code == 200, onboard.text
        post = client.get("/users/carol").json()["posterior"]
        assert post["n_answers"] == 2
        assert sum(post["weights_std"]) < sum(prior_std)
        nxt = client.post("/users/carol/next-questions", json={"candidates": pool, "n": 4}).json()
        assert nxt["n_answers"] == 2
        assert not {q["index"] for q in nxt["questions"]} & {q["index"] for q in asked}


def test_a_model_without_a_prior_has_no_posterior(small_model, tmp_path):
    """The 'paper' recipe fits without a few-shot prior: no posterior, next-questions 409."""
    model = small_model.copy()
    model.settings = {**model.settings, "fewshot_prior": 0.0}
    app = create_app(model, HashingEmbedder(D), tmp_path / "db.sqlite")
    with LiveServer(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/users/newbie").json()["posterior"] is None
        out = client.post("/users/newbie/next-questions", json={"candidates": candidates(3)})
        assert out.status_code == 409, out.text
        assert "prior" in out.json()["detail"]


def test_questions_while_the_user_is_being_onboarded(served):
    """Concurrent answers and questions for one user: every call succeeds, and each
    posterior conditions on whole onboarding posts (4 comparisons each, committed at once)."""
    client = served
    results: list[httpx.Response] = []

    def onboard(k: int) -> None:
        body = {"comparisons": answers(12)[4 * k : 4 * k + 4]}
        results.append(client.post("/users/dave/comparisons", json=body))

    def ask() -> None:
        body = {"candidates": candidates(10), "n": 3}
        results.append(client.post("/users/dave/next-questions", json=body))

    threads = [threading.Thread(target=onboard, args=(k,)) for k in range(3)]
    threads += [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    seen = {r.json()["n_answers"] for r in results if "questions" in r.json()}
    assert seen <= {0, 4, 8, 12}
    assert client.get("/users/dave").json()["posterior"]["n_answers"] == 12

"""Cross-request micro-batching: concurrent requests share backbone calls, each gets its own
rewards (equal to one-at-a-time scoring), errors stay with their request, shutdown drains."""

from __future__ import annotations

import gc
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from serve_utils import LiveServer, conversation, fit_small_model, random_text

from lore_rm.embed import load_backbone
from lore_rm.errors import DataError, LoreError
from lore_rm.serve import Batching, RewardService, create_app
from lore_rm.serve.app import build_app
from lore_rm.serve.batching import MicroBatcher

POISON = "poison"  # a conversation holding this word makes the embedder fail


class FailingOn:
    """The tiny Llama backbone, except that it raises on any batch holding ``POISON``."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self.calls: list[int] = []  # conversations per call

    def embed(self, conversations):
        self.calls.append(len(conversations))
        if any(POISON in m["content"] for c in conversations for m in c):
            raise DataError("the backbone refused a conversation")
        return self.inner.embed(conversations)

    def reference_head(self):
        return self.inner.reference_head()


@pytest.fixture(scope="module")
def llama(tiny_reward_model_dir):
    """The tiny Llama (fp32, one forward for up to 64 texts) and a model fitted over it."""
    emb = load_backbone(str(tiny_reward_model_dir), dtype="fp32", device="cpu", batch_size=64)
    return emb, fit_small_model(embedder=emb, seed=1)


def requests_of(n: int, seed: int) -> list[tuple[str, dict]]:
    """``n`` single-sample requests, half ``/reward`` and half ``/get_reward``, with
    different texts and users (seen and unknown)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt, response = random_text(gen), random_text(gen, 4 + i % 9)
        user = f"seen{i % 8}" if i % 5 else f"new{i}"
        if i % 2:
            body = {"user": user, "conversations": [conversation(prompt, response)]}
            out.append(("/reward", body))
        else:
            query = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
            body = {"query": [query + response], "prompts": [query], "labels": [user]}
            out.append(("/get_reward", body))
    return out


def post_all(url: str, reqs: list[tuple[str, dict]]) -> list[httpx.Response]:
    """All requests at once, one thread each, released together."""
    out: list[httpx.Response | None] = [None] * len(reqs)
    start = threading.Barrier(len(reqs))

    def go(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            start.wait()
            out[i] = c.post(reqs[i][0], json=reqs[i][1])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r is not None for r in out)
    return out  # type: ignore[return-value]


def one_at_a_time(url: str, reqs: list[tuple[str, dict]]) -> list[float]:
    with httpx.Client(base_url=url, timeout=60) as c:
        return [c.post(path, json=body).json()["rewards"][0] for path, body in reqs]


def test_concurrent_requests_batched_equal_one_at_a_time(llama, tmp_path):
    emb, model = llama
    reqs = requests_of(40, seed=3)
    # a wait long enough that the concurrent requests surely meet in shared batches
    app = create_app(model, emb, tmp_path / "on.sqlite", batching=Batching(64, 200.0))
    off = create_app(model, emb, tmp_path / "off.sqlite", batching=Batching(max_wait_ms=0))
    assert not off.state.batching.enabled
    with LiveServer(app) as url, LiveServer(off) as url_off:
        got = post_all(url, reqs)
        alone = one_at_a_time(url_off, reqs)
    assert [r.status_code for r in got] == [200] * len(reqs)
    batcher = app.state.batcher
    assert batcher.largest >= 8  # requests really were gathered
    rewards = [r.json()["rewards"][0] for r in got]
    np.testing.assert_allclose(rewards, alone, rtol=1e-5, atol=1e-5)
    # and both equal the model's reward of each conversation embedded on its own
    for (path, body), r in zip(reqs, got, strict=True):
        if path == "/reward":
            user, conv = body["user"], body["conversations"][0]
            e = emb.embed([conv])
            want = model.reward(e, [user], unknown="mean").double().numpy()
            np.testing.assert_allclose(r.json()["rewards"], want, rtol=1e-5, atol=1e-5)
            assert r.json()["known"] == [user.startswith("seen")]
    assert len(set(np.round(rewards, 6))) > len(reqs) // 2  # distinct answers, not one shared


def test_a_failing_request_does_not_fail_its_batch(llama, tmp_path):
    inner, model = llama
    emb = FailingOn(inner)
    reqs = requests_of(24, seed=4)
    bad = {3, 10, 17}
    for i in bad:
        path, body = reqs[i]
        if path == "/reward":
            body["conversations"][0][1]["content"] += f" {POISON}"
        else:
            body["query"][0] += f" {POISON}"
    svc = RewardService(model, emb, tmp_path / "db.sqlite", warm_up=False)
    app = create_app(model, emb, tmp_path / "db.sqlite", service=svc, batching=Batching(64, 200))
    with LiveServer(app) as url:
        got = post_all(url, reqs)
        good = [r for i, r in enumerate(reqs) if i not in bad]
        alone = one_at_a_time(url, good)
    assert max(emb.calls) > 4  # there were shared calls (which failed, then were split)
    for i, r in enumerate(got):
        if i in bad:
            assert r.status_code == 422
            assert "refused" in r.json()["detail"][0]["msg"]
        else:
            assert r.status_code == 200
    rewards = [r.json()["rewards"][0] for i, r in enumerate(got) if i not in bad]
    np.testing.assert_allclose(rewards, alone, rtol=1e-5, atol=1e-5)


def test_batcher_limits_splits_and_drains(llama, tmp_path):
    emb, model = llama
    svc = RewardService(model, FailingOn(emb), tmp_path / "db.sqlite", warm_up=False)
    gen = torch.Generator().manual_seed(5)
    convs = [conversation(random_text(gen), random_text(gen)) for _ in range(12)]
    users = [f"seen{i % 8}" for i in range(12)]
    want = svc.reward(convs, users).rewards
    batcher = MicroBatcher(svc.embed_now, Batching(max_texts=4, max_wait_ms=5_000))
    # sizes 1, 6 (over max_texts: cut into chunks), 2, 3; closing at once must not wait 5 s
    cuts = [0, 1, 7, 9, 12]
    t0 = time.monotonic()
    futs = [
        batcher.submit(convs[a:b], lambda e, u=users[a:b]: svc.score(e, u))
        for a, b in zip(cuts, cuts[1:], strict=False)
    ]
    batcher.close(timeout=30)
    assert time.monotonic() - t0 < 4.0
    assert not batcher._thread.is_alive()
    got = np.concatenate([f.result(timeout=0).rewards for f in futs])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    calls = svc.embedder.calls[1:]  # after the reference call above
    assert sum(calls) == 12 and max(calls) == 4 and batcher.calls == calls
    with pytest.raises(LoreError, match="shutting down"):
        batcher.submit(convs[:1], users[:1])


def test_server_shutdown_finishes_inflight_requests(llama, tmp_path):
    emb, model = llama
    app = create_app(model, emb, tmp_path / "db.sqlite", batching=Batching(64, 300.0))
    reqs = requests_of(12, seed=6)
    server = LiveServer(app, lifespan="on")
    with server as url:
        results: list[httpx.Response] = []
        t = threading.Thread(target=lambda: results.extend(post_all(url, reqs)))
        t.start()
        while server.server.server_state.total_requests < len(reqs) and t.is_alive():
            threading.Event().wait(0.01)
    t.join(30)
    assert not server.thread.is_alive() and not app.state.batcher._thread.is_alive()
    assert [r.status_code for r in results] == [200] * len(reqs)


@pytest.mark.parametrize(
    ("texts", "wait", "on"), [(32, 1.5, True), (1, 5.0, False), (32, 0, False)]
)
def test_batching_settings(llama, tmp_path, texts, wait, on):
    model_dir = tmp_path / "model"
    llama[1].save_pretrained(model_dir)  # its backbone: the tiny Llama's folder
    app = build_app(
        str(model_dir),
        dtype="fp32",
        batching={"max_texts": texts, "max_wait_ms": wait},
    )
    assert app.state.batching.enabled is on
    assert gc.get_freeze_count() > 0  # the loaded backbone is out of the cyclic GC's reach
    # on: one forward pass takes as many texts as a batch gathers; off: the default
    default = load_backbone(llama[0].name, dtype="fp32", device="cpu").batch_size
    assert app.state.service.embedder.batch_size == (texts if on else default)
    with LiveServer(app) as url:
        info = httpx.get(url + "/model-info").json()
    assert info["batching"] == {"max_texts": texts, "max_wait_ms": wait, "chunk_ms": 200.0}


def test_batching_settings_are_checked():
    with pytest.raises(LoreError, match="max_texts"):
        Batching(max_texts=0)
    with pytest.raises(LoreError, match="max_wait_ms"):
        Batching(max_wait_ms=-1)


def test_a_closed_batcher_answers_503(llama, tmp_path):
    emb, model = llama
    app = create_app(model, emb, tmp_path / "db.sqlite", batching=Batching(8, 1.0))
    app.state.batcher.close()
    path, body = requests_of(1, seed=7)[0]
    with LiveServer(app) as url:
        r = httpx.post(url + path, json=body, timeout=30)
    assert r.status_code == 503 and "shutting down" in r.json()["detail"]

"""Trainer inputs -> conversations, and the TRL reward functions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from serve_utils import D, LiveServer, conversation, shared_model_dir

from lore_rm import LowRankReward
from lore_rm.embed.hashing import HashingEmbedder
from lore_rm.errors import DataError
from lore_rm.serve import create_app, make_remote_reward_func, make_reward_func
from lore_rm.serve.formats import (
    parse_prompt_text,
    query_conversation,
    read_query,
    strip_suffixes,
)

text = st.text(st.characters(blacklist_characters="<>|", blacklist_categories=("Cs",)), max_size=40)


@given(prompt=text, response=text)
def test_read_query_recovers_the_response(prompt, response):
    """The response exactly as generated, its surrounding whitespace included (the one
    whitespace rule: as at fit time, texts are scored as given)."""
    conv, matched = read_query(prompt + response, prompt, parse_templates=False)
    assert matched
    assert conv[-1] == {"role": "assistant", "content": response}
    assert conv[:-1] == [{"role": "user", "content": prompt}]
    # end-of-turn tokens the template added go, with the whitespace after them
    conv, _ = read_query(prompt + response + "<|im_end|>\n<|endoftext|>", prompt)
    assert conv[-1]["content"] == response


def test_read_query_strips_end_tokens_and_parses_templates():
    llama = (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nbe kind<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nhi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    conv, _ = read_query(llama + "hello!<|eot_id|><|end_of_text|>", llama)
    assert conv == [
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello!"},
    ]
    assert parse_prompt_text("plain question?") == [{"role": "user", "content": "plain question?"}]
    assert strip_suffixes("ok</s></s>  ", ["</s>"]) == "ok"
    assert read_query("whole text", None) == (
        [{"role": "assistant", "content": "whole text"}],
        True,
    )


def test_a_query_without_its_prompt_is_read_on_its_own():
    prompt = "<|im_start|>user\nname a fruit<|im_end|>\n<|im_start|>assistant\n"
    query = prompt[5:] + "apple<|im_end|><|endoftext|>"  # the prompt was truncated
    conv, matched = read_query(query, prompt)
    assert not matched
    # the turns the query still holds (the cut one's tail is left out), the response last
    assert conv == [{"role": "assistant", "content": "apple"}]
    whole = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>"
    assert query_conversation(whole) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    # a query ending on a user turn: the response is empty
    assert query_conversation("<|im_start|>user\nhi")[-1] == {"role": "assistant", "content": ""}
    # no template (or --keep-template): the whole query is the response, as with no prompt
    assert read_query("cut prompt. answer</s>", "full prompt. ") == (
        [{"role": "assistant", "content": "cut prompt. answer"}],
        False,
    )
    assert query_conversation(whole, parse_templates=False) == read_query(whole, None)[0]
    assert read_query("p answer", "p ")[1]


@pytest.fixture()
def model_and_embedder():
    return LowRankReward.from_pretrained(shared_model_dir()), HashingEmbedder(D)


def test_trl_reward_func_standard_and_conversational(model_and_embedder):
    model, emb = model_and_embedder
    f = make_reward_func(model, emb, user_column="annotator", name="persona_reward")
    assert f.__name__ == "persona_reward"
    prompts = ["name a fruit", "describe the sea"]
    completions = ["apple cherry", "ocean night"]
    users = ["seen1", "stranger"]
    got = f(
        prompts=prompts,
        completions=completions,
        annotator=users,
        completion_ids=[[1], [2]],
        trainer_state=None,
    )
    convs = [conversation(p, c) for p, c in zip(prompts, completions, strict=True)]
    want = [
        float(model.reward(emb.embed([convs[0]]), "seen1")[0]),
        float(model.reward(emb.embed([convs[1]]), "stranger", unknown="mean")[0]),
    ]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # conversational format gives the same numbers
    conv_prompts = [[{"role": "user", "content": p}] for p in prompts]
    conv_completions = [[{"role": "assistant", "content": c}] for c in completions]
    got2 = f(prompts=conv_prompts, completions=conv_completions, annotator=users)
    np.testing.assert_allclose(got2, got, rtol=1e-6)
    # batching does not change anything
    small = make_reward_func(model, emb, user_column="annotator", batch_size=1)
    np.testing.assert_allclose(small(completions, prompts, annotator=users), got, rtol=1e-6)


def test_trl_reward_func_names_a_missing_column(model_and_embedder):
    model, emb = model_and_embedder
    f = make_reward_func(model, emb)
    with pytest.raises(DataError, match="'user_id'.*columns passed: persona"):
        f(completions=["x"], prompts=["p"], persona=["a"])
    with pytest.raises(DataError, match="2 values for 1"):
        f(completions=["x"], prompts=["p"], user_id=["a", "b"])


def test_remote_reward_func_matches_local(model_and_embedder, tmp_path):
    model, emb = model_and_embedder
    local = make_reward_func(model, emb)
    app = create_app(model, emb, tmp_path / "db.sqlite", token="tok")
    prompts = ["a question", "another one", "third"]
    completions = ["apple", "tiger river", "violet"]
    users = ["seen0", "seen4", None]
    with LiveServer(app) as url:
        remote = make_remote_reward_func(url, token="tok", batch_size=2)
        got = remote(completions, prompts, user_id=users)
    np.testing.assert_allclose(got, local(completions, prompts, user_id=users), rtol=1e-5)


def test_fifo_lock_hands_over_in_arrival_order():
    import threading
    import time

    from lore_rm.serve.user_store import FifoLock

    lock = FifoLock()
    order: list[int] = []
    lock.acquire()

    def take(i: int) -> None:
        with lock:
            order.append(i)

    threads = []
    for i in range(5):
        t = threading.Thread(target=take, args=(i,))
        t.start()
        threads.append(t)
        deadline = time.monotonic() + 5
        while len(lock._waiters) < i + 1:  # wait until thread i queues
            assert time.monotonic() < deadline
            time.sleep(0.001)
    lock.release()
    for t in threads:
        t.join(timeout=5)
    assert order == [0, 1, 2, 3, 4]
    lock.acquire()  # free again
    lock.release()


class ExactTextEmbedder:
    """d = 8, an embedding per exact conversation (any whitespace changes it): a stand-in
    for a backbone whose chat template keeps whitespace (ChatML does)."""

    name = "exact-text-8"
    dim = 8

    def embed(self, conversations, **_):
        import hashlib
        import json

        import torch

        rows = []
        for c in conversations:
            seed = hashlib.sha256(json.dumps(c).encode()).digest()[:4]
            gen = torch.Generator().manual_seed(int.from_bytes(seed, "little"))
            rows.append(torch.randn(8, generator=gen))
        return torch.stack(rows)

    def reference_head(self):
        return None


def test_one_whitespace_rule_for_every_entry_point(tmp_path):
    """The same generated text scores the same through /get_reward, /reward, TRL's and
    verl's functions: its surrounding whitespace is kept everywhere
    (/get_reward used to strip it, the others kept it: up to 0.15 apart)."""
    import httpx
    import torch

    from lore_rm.serve.verl import make_verl_reward

    emb = ExactTextEmbedder()
    model = LowRankReward.from_arrays(torch.randn(8, 2), torch.tensor([[0.7, 0.3]]), ["ann"])
    prompt, generated = "Name a fruit", "  A ripe mango.\n"
    chatml = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    convs = [conversation(prompt, generated)]
    want = model.reward(emb.embed(convs), "ann").tolist()
    assert (
        want != model.reward(emb.embed([conversation(prompt, generated.strip())]), "ann").tolist()
    )
    with LiveServer(create_app(model, emb, tmp_path / "db.sqlite")) as url:
        with httpx.Client(base_url=url) as client:
            body = {"query": [chatml + generated + "<|im_end|>\n"], "prompts": [chatml],
                    "labels": ["ann"]}  # fmt: skip
            openrlhf = client.post("/get_reward", json=body).json()["rewards"]
            native = client.post("/reward", json={"user": "ann", "conversations": convs})
    trl = make_reward_func(model, emb)(completions=[generated], prompts=[prompt], user_id=["ann"])
    verl = make_verl_reward(model, emb, details=False).compute_score(
        "src", generated, None, {"prompt": prompt, "user_id": "ann"}
    )
    for got in (openrlhf, native.json()["rewards"], trl, [verl]):
        np.testing.assert_allclose(got, want, rtol=1e-6)

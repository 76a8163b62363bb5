"""Backbones: pooling, padding, the reference head, deduplication, MiniLM, names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import build_tokenizer, random_conversations

from lore_rm import Comparisons, LowRankReward
from lore_rm.embed import Embedder, HashingEmbedder, load_backbone
from lore_rm.errors import LoreError


def _hf_logits(model_dir, conversations):
    """The reward model's own logits, one conversation at a time, the plain HF way."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    tok = build_tokenizer()
    out = []
    with torch.no_grad():
        for c in conversations:
            text = tok.apply_chat_template(c, tokenize=False)
            ids = tok(text, add_special_tokens=False, return_tensors="pt")
            out.append(float(model(**ids).logits[0, 0]))
    return torch.tensor(out)


@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_equals_one_at_a_time(tiny_reward_model_dir, side):
    emb = load_backbone(
        str(tiny_reward_model_dir), dtype="fp32", device="cpu", batch_size=5, padding_side=side
    )
    convs = random_conversations(17, seed=1)
    batched = emb.embed(convs)
    single = torch.cat([emb.embed([c]) for c in convs])
    assert batched.shape == (17, 32) and batched.dtype == torch.float32
    lengths = {len(emb.render(c).split()) for c in convs}
    assert len(lengths) > 5  # the batches really were padded
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_left_and_right_padding_agree(tiny_reward_model_dir):
    convs = random_conversations(12, seed=2)
    out = [
        load_backbone(
            str(tiny_reward_model_dir), dtype="fp32", device="cpu", batch_size=6, padding_side=side
        ).embed(convs)
        for side in ("left", "right")
    ]
    torch.testing.assert_close(out[0], out[1], atol=1e-5, rtol=1e-5)


def test_rank0_reward_is_the_models_own_logit(tiny_backbone, tiny_reward_model_dir):
    convs = random_conversations(10, seed=3)
    table = tiny_backbone.embed(convs)
    comps = Comparisons.from_pairs(table, [0, 2, 4], [1, 3, 5], ["a", "b", "a"])
    model = LowRankReward(rank=0).fit(comps, reference_head=tiny_backbone.reference_head())
    rewards = model.reward(table, "a")
    expected = _hf_logits(tiny_reward_model_dir, convs)
    assert expected.std() > 0.1  # a visible signal, not all-equal rewards
    torch.testing.assert_close(rewards, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(tiny_backbone.reward_logits(convs), expected, atol=1e-4, rtol=1e-4)


def test_reference_head_is_the_score_row_not_the_last_linear(tiny_backbone):
    head = tiny_backbone.reference_head()
    torch.testing.assert_close(head, tiny_backbone.model.score.weight[0].detach())
    # The published defect: the last nn.Linear of the bare transformer (AutoModel).
    body = tiny_backbone.model.model
    last_linear = [m for m in body.modules() if isinstance(m, torch.nn.Linear)][-1]
    wrong = last_linear.weight[:, -1].detach()
    assert wrong.shape == head.shape and not torch.allclose(wrong, head)
    assert tiny_backbone.reference_bias() is None


def test_score_bias_is_reported_and_left_out_of_the_reward(tiny_reward_model_dir):
    # Llama's score layer has no bias; give one to an in-memory copy to check the handling.
    from transformers import AutoModelForSequenceClassification

    from lore_rm.embed.hf import RewardModelEmbedder

    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_reward_model_dir, dtype=torch.float32
    )
    old = model.score
    model.score = torch.nn.Linear(old.in_features, 1, bias=True)
    with torch.no_grad():
        model.score.weight.copy_(old.weight)
        model.score.bias.fill_(0.75)
    emb = RewardModelEmbedder(
        model,
        build_tokenizer(),
        "biased",
        device=torch.device("cpu"),
        batch_size=4,
        max_length=512,
        padding_side=None,
        revision="x",
    )
    assert emb.reference_bias() == pytest.approx(0.75)
    convs = random_conversations(4, seed=4)
    tok = build_tokenizer()
    with torch.no_grad():
        logits = torch.tensor(
            [
                float(
                    model(
                        **tok(
                            tok.apply_chat_template(c, tokenize=False),
                            add_special_tokens=False,
                            return_tensors="pt",
                        )
                    ).logits[0, 0]
                )
                for c in convs
            ]
        )
    torch.testing.assert_close(
        emb.embed(convs) @ emb.reference_head(), logits - 0.75, atol=1e-4, rtol=1e-4
    )


def test_duplicates_are_embedded_once(tiny_reward_model_dir):
    emb = load_backbone(str(tiny_reward_model_dir), dtype="fp32", device="cpu", batch_size=3)
    seen_rows = []
    handle = emb.body.register_forward_pre_hook(
        lambda m, args, kwargs: seen_rows.append(kwargs["input_ids"].shape[0]),
        with_kwargs=True,
    )
    base = random_conversations(6, seed=5)
    convs = [base[i] for i in (0, 1, 0, 2, 3, 1, 4, 5, 0)]
    out = emb.embed(convs)
    handle.remove()
    assert sum(seen_rows) == 6 and emb.forwarded == 6
    torch.testing.assert_close(out[0], out[2])
    torch.testing.assert_close(out[0], out[8])
    torch.testing.assert_close(out[1], out[5])
    assert not torch.allclose(out[0], out[1])


def test_long_texts_keep_their_end(tiny_reward_model_dir):
    emb = load_backbone(str(tiny_reward_model_dir), dtype="fp32", device="cpu", max_length=12)
    conv = [
        {"role": "user", "content": "tell me a long story " * 10},
        {"role": "assistant", "content": "good"},
    ]
    other = [conv[0], {"role": "assistant", "content": "bad"}]
    with pytest.warns(UserWarning, match="longer than max_length"):
        out = emb.embed([conv, other])
    ids = emb._token_ids([conv])[0]
    assert len(ids) == 12 and ids[0] == emb.tokenizer.bos_token_id
    assert not torch.allclose(out[0], out[1])  # the responses survived truncation


def test_minilm_offline_matches_sentence_transformers(minilm_backbone):
    from sentence_transformers import SentenceTransformer

    from lore_rm.embed.backbones import minilm_path

    convs = random_conversations(6, seed=6)
    ours = minilm_backbone.embed(convs)
    assert ours.shape == (6, 384) and minilm_backbone.reference_head() is None
    assert isinstance(minilm_backbone, Embedder)
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(6))
    st = SentenceTransformer(str(minilm_path()), device="cpu")
    ref = st.encode([minilm_backbone.render(c) for c in convs], convert_to_tensor=True)
    torch.testing.assert_close(ours, ref.cpu(), atol=1e-5, rtol=1e-4)
    single = torch.cat([minilm_backbone.embed([c]) for c in convs])
    torch.testing.assert_close(ours, single, atol=1e-5, rtol=1e-4)
    ident = minilm_backbone.identity()
    assert ident["pooling"] == "mean+l2" and ident["d"] == 384 and ident["max_length"] == 256


def test_minilm_similar_texts_are_closer(minilm_backbone):
    def conv(a):
        return [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": a},
        ]

    e = minilm_backbone.embed(
        [
            conv("Paris is the capital of France."),
            conv("The capital of France is Paris."),
            conv("I like to eat green apples with cheese."),
        ]
    )
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.1


def test_named_hashing_backbone():
    emb = load_backbone("hashing-64")
    assert isinstance(emb, HashingEmbedder) and isinstance(emb, Embedder) and emb.dim == 64
    convs = random_conversations(3)
    np.testing.assert_allclose(emb.embed(convs).numpy(), HashingEmbedder(64).embed(convs).numpy())


def test_bad_inputs_are_clear_errors(tiny_backbone, tmp_path):
    with pytest.raises(LoreError, match="dtype"):
        load_backbone(str(tmp_path), dtype="int8")
    with pytest.raises(LoreError, match="cannot load backbone"):
        load_backbone(str(tmp_path / "nope"), dtype="fp32", device="cpu")
    with pytest.raises(LoreError, match="role"):
        tiny_backbone.embed([[{"content": "no role"}]])


@pytest.mark.parametrize("which", ["tiny", "minilm"])
def test_very_long_texts_are_cut_before_tokenising_with_the_same_ids(
    which, tiny_reward_model_dir, tmp_path
):
    """A text far longer than max_length is tokenised from its end only: the kept ids equal
    those of the whole text, truncated (H2: a 15 MiB prompt used to be tokenised whole)."""
    import random

    from lore_rm.embed import load_backbone
    from lore_rm.embed.hf import MAX_CHARS_PER_TOKEN

    source = str(tiny_reward_model_dir) if which == "tiny" else "minilm"
    emb = load_backbone(source, dtype="fp32", device="cpu", max_length=40)
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta,", "eps.", "zeta?", "eta", "théta"]
    long_text = " ".join(rng.choice(words) for _ in range(4000))  # ~25k chars
    conv = [{"role": "user", "content": long_text}, {"role": "assistant", "content": "fine"}]
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert len(emb.render(conv)) > 40 * MAX_CHARS_PER_TOKEN
    special = which == "minilm"
    whole = emb.tokenizer(
        [emb.render(conv), emb.render(short)], add_special_tokens=special, verbose=False
    )["input_ids"]
    bos = emb.tokenizer.bos_token_id
    want = [
        emb._truncate(list(x), keep_first=special or (bool(x) and x[0] == bos), room=40)
        for x in whole
    ]
    assert emb._token_ids([conv, short]) == want
    assert len(want[0]) == 40


class _Spy:
    """A tokenizer proxy that records the longest text it was asked to tokenise."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.longest = 0

    def __call__(self, texts, **kw):
        self.longest = max([self.longest, *map(len, texts)])
        return self.inner(texts, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("tail", [" " * 9000, "y" * 9000, "\n" * 9000])
def test_a_long_text_whose_end_holds_few_tokens_is_never_tokenised_whole(minilm_backbone, tail):
    """Whitespace yields no WordPiece token and a 100+ character word one [UNK]: such an end
    used to send the whole text to the tokenizer (a 15 MiB prompt: 113 s, 7 GB). Now the cut
    widens to a cap and stops there, whatever the text's length."""
    from lore_rm.embed.hf import MAX_CHARS_PER_TOKEN

    emb = minilm_backbone
    cap = emb.max_length * MAX_CHARS_PER_TOKEN * 16  # hf.TAIL_WIDEST
    text = "x " * cap + tail  # over twice the cap
    conv = [{"role": "user", "content": "q"}, {"role": "assistant", "content": text}]
    spy = _Spy(emb.tokenizer)
    emb.tokenizer = spy
    try:
        (ids,) = emb._token_ids([conv])
    finally:
        emb.tokenizer = spy.inner
    assert spy.longest <= cap + 1
    assert len(ids) == emb.max_length  # still a full window: the x's before the tail
    assert ids[0] == emb.tokenizer.cls_token_id and ids[-1] == emb.tokenizer.sep_token_id

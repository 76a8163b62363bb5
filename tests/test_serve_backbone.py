"""`lore serve` serves what was fitted: the recorded backbone by default (same rewards as on
the stored embeddings), and another backbone of the same width only when forced."""

from __future__ import annotations

import json
import logging
import random
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from tiny_models import WORDS, build_tiny_reward_model
from typer.testing import CliRunner

from lore_rm import LowRankReward
from lore_rm.cli import app as cli_app
from lore_rm.embed import EmbeddingStore, load_backbone
from lore_rm.embed.match import BackboneMismatchError, backbone_differences
from lore_rm.serve.app import build_app

pytestmark = pytest.mark.slow  # integration: embed + fit + serve over a transformers backbone


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A rank-2 model fitted by the CLI on backbone ``a``; ``b`` is another random tiny Llama
    of the same width and config (seed 1)."""
    root = tmp_path_factory.mktemp("served")
    a = build_tiny_reward_model(root / "a", seed=0)
    b = build_tiny_reward_model(root / "b", seed=1)
    rng = random.Random(0)

    def words(k):
        return " ".join(rng.choice(WORDS) for _ in range(k))

    prompts = [words(5) for _ in range(8)]
    rows = [
        {"prompt": p, "chosen": words(4), "rejected": words(3), "user_id": f"u{u}"}
        for u in range(6)
        for p in rng.sample(prompts, 6)
    ]
    src = root / "prefs.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds, model_dir = root / "ds", root / "model"
    runner = CliRunner()
    for args in (
        ("prepare", "generic", src, "--out", ds, "--unseen-fraction", "0"),
        ("embed", ds, "--backbone", a, "--dtype", "fp32", "--device", "cpu", "--no-progress"),
        ("fit", ds, "--out", model_dir, "--rank", "2", "--weight-decay", "0.1", "--no-progress"),
    ):
        res = runner.invoke(cli_app, [str(x) for x in args])
        assert res.exit_code == 0, res.output
    return root, a, b, ds, model_dir


def test_served_rewards_equal_the_fitted_rewards_on_the_stored_embeddings(fitted, tmp_path):
    """No --backbone, no --dtype: the service embeds as the store did, to 1e-5."""
    _, _, _, ds, model_dir = fitted
    model = LowRankReward.from_pretrained(model_dir)
    stored = EmbeddingStore(ds).load()
    texts = [json.loads(m) for m in _messages(ds)]
    users = [model.users_[i % len(model.users_)] for i in range(len(texts))]
    client = TestClient(build_app(str(model_dir), db=str(tmp_path / "db.sqlite")))
    out = client.post("/reward", json={"users": users, "conversations": texts})
    assert out.status_code == 200, out.text
    assert all(out.json()["known"])
    want = model.reward(stored, users).double().numpy()
    np.testing.assert_allclose(out.json()["rewards"], want, rtol=1e-5, atol=1e-5)


def _messages(ds) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(ds / "texts.parquet", columns=["messages"]).column(0).to_pylist()


def test_another_backbone_of_the_same_width_is_refused_unless_forced(fitted, tmp_path, caplog):
    root, a, b, _, model_dir = fitted
    with pytest.raises(BackboneMismatchError, match="fingerprint .*--force-backbone"):
        build_app(str(model_dir), str(b), db=str(tmp_path / "1.sqlite"))

    res = CliRunner().invoke(
        cli_app, ["serve", str(model_dir), "--backbone", str(b), "--db", str(tmp_path / "2.db")]
    )
    assert res.exit_code == 2
    assert "fingerprint" in res.output and "--force-backbone" in res.output
    assert "Traceback" not in res.output

    with caplog.at_level(logging.WARNING, logger="lore_rm.serve"):
        app = build_app(str(model_dir), str(b), db=str(tmp_path / "3.db"), force_backbone=True)
    assert app.state.service.embedder.name == str(b)
    assert "--force-backbone" in caplog.text and "fingerprint" in caplog.text

    # the same checkpoint in another folder is the same backbone
    copy = shutil.copytree(a, root / "a-copy")
    app = build_app(str(model_dir), str(copy), db=str(tmp_path / "4.db"))
    assert app.state.service.embedder.name == str(copy)


def test_other_chat_template_and_width_are_refused(fitted, tmp_path):
    root, a, _, _, model_dir = fitted
    other = shutil.copytree(a, root / "a-template")
    cfg_path = other / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    cfg_path.write_text(json.dumps(cfg))
    (other / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(BackboneMismatchError, match="chat_template_sha256"):
        build_app(str(model_dir), str(other), db=str(tmp_path / "1.db"))
    # a width other than d cannot be forced
    with pytest.raises(BackboneMismatchError, match="d = 16 but the model was fitted on d = 32"):
        build_app(str(model_dir), "hashing-16", db=str(tmp_path / "2.db"), force_backbone=True)


def test_records_without_a_fingerprint_are_compared_by_name(fitted, tmp_path):
    """Models fitted before fingerprints were recorded still load and serve; the name (and
    revision) decide."""
    root, a, b, _, model_dir = fitted
    old = shutil.copytree(model_dir, root / "old-model")
    training = json.loads((old / "training.json").read_text())
    del training["backbone"]["fingerprint"]
    (old / "training.json").write_text(json.dumps(training))
    assert build_app(str(old), db=str(tmp_path / "1.db")).state.service.embedder.name == str(a)
    with pytest.raises(BackboneMismatchError, match="name .*recorded"):
        build_app(str(old), str(b), db=str(tmp_path / "2.db"))
    (old / "training.json").unlink()  # no record at all: config.json's name
    with pytest.raises(BackboneMismatchError, match="name"):
        build_app(str(old), str(b), db=str(tmp_path / "3.db"))


def test_fingerprint_ignores_dtype_and_folder_and_sees_weights(fitted):
    root, a, b, _, _ = fitted
    fp32 = load_backbone(str(a), dtype="fp32", device="cpu").identity()
    bf16 = load_backbone(str(a), dtype="bf16", device="cpu").identity()
    other = load_backbone(str(b), dtype="fp32", device="cpu").identity()
    assert fp32["fingerprint"].startswith("sha256:")
    assert fp32["fingerprint"] == bf16["fingerprint"] != other["fingerprint"]
    assert fp32["revision"] == other["revision"]  # config + file sizes: the same
    assert backbone_differences(fp32, bf16) == []
    assert backbone_differences(fp32, other) == [
        f"fingerprint {other['fingerprint'][:23]}... (recorded {fp32['fingerprint'][:23]}...)"
    ]


def test_sliced_fingerprint_of_large_files(tmp_path, monkeypatch):
    """Files above the whole-file limit are fingerprinted by slices, which still see a
    change anywhere a slice falls and the file size."""
    from lore_rm.embed import fingerprint

    monkeypatch.setattr(fingerprint, "WHOLE_FILE_BYTES", 64)
    monkeypatch.setattr(fingerprint, "SLICE_BYTES", 8)
    monkeypatch.setattr(fingerprint, "N_SLICES", 4)
    (tmp_path / "config.json").write_text("{}")
    data = bytearray(range(200))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(bytes(data))
    base = fingerprint.folder_fingerprint(tmp_path)
    assert base == fingerprint.folder_fingerprint(tmp_path)
    data[-1] ^= 1  # the last slice ends the file
    weights.write_bytes(bytes(data))
    assert fingerprint.folder_fingerprint(tmp_path) != base
    weights.write_bytes(bytes(data) + b"\0")
    assert fingerprint.folder_fingerprint(tmp_path) != base
    weights.unlink()
    assert fingerprint.folder_fingerprint(tmp_path) is None


def test_a_hub_backbone_is_fingerprinted_from_the_local_cache(fitted, tmp_path, monkeypatch):
    """A Hub id whose files are in the Hugging Face cache has its snapshot's fingerprint: the
    same as a local copy of those files."""
    from huggingface_hub import constants

    from lore_rm.embed.fingerprint import backbone_fingerprint, folder_fingerprint

    _, a, _, _, _ = fitted
    repo = tmp_path / "models--org--tiny"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    for name in ("config.json", "model.safetensors"):
        shutil.copy(a / name, snapshot / name)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert backbone_fingerprint("org/tiny") == folder_fingerprint(a) is not None
    assert backbone_fingerprint("org/absent") is None


def test_score_refuses_another_backbone_unless_forced(fitted, tmp_path):
    """`lore score` runs the same check as `lore serve`."""
    _, a, b, _, model_dir = fitted
    model = LowRankReward.from_pretrained(model_dir)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"user": u, "prompt": "tell me", "response": f"answer {i}"}) + "\n"
            for i, u in enumerate(model.users_[:3])
        )
    )
    runner = CliRunner()
    base = ["score", str(model_dir), str(rows), "--no-progress", "--dtype", "fp32"]
    res = runner.invoke(cli_app, [*base, "--backbone", str(b)])
    assert res.exit_code == 2, res.output
    assert "fingerprint" in res.output and "--force-backbone" in res.output
    assert "Traceback" not in res.output

    forced = runner.invoke(cli_app, [*base, "--backbone", str(b), "--force-backbone"])
    assert forced.exit_code == 0, forced.output
    assert "other than the one the model was fitted on" in forced.output
    assert "fingerprint" in forced.output

    same = runner.invoke(cli_app, [*base, "--backbone", str(a)])
    assert same.exit_code == 0, same.output
    assert "other than" not in same.output
    scored = [json.loads(line) for line in same.stdout.splitlines() if line.startswith("{")]
    assert len(scored) == 3 and all(r["known"] for r in scored)


def test_the_database_binds_the_backbone_by_content(fitted, tmp_path):
    """A served database follows the backbone's fingerprint, not its folder: a copy of the
    checkpoint serves it; another backbone, even forced, does not."""
    from lore_rm.errors import ModelFormatError

    root, a, b, _, model_dir = fitted
    db = str(tmp_path / "bound.db")
    build_app(str(model_dir), str(a), db=db).state.service.close()
    copy = root / "a-copy-db"
    if not copy.exists():
        shutil.copytree(a, copy)
    build_app(str(model_dir), str(copy), db=db).state.service.close()
    with pytest.raises(ModelFormatError, match="embedder = 'sha256:"):
        build_app(str(model_dir), str(b), db=db, force_backbone=True)


def test_export_refuses_another_backbone_unless_forced(fitted, tmp_path):
    """`lore export` runs the check `lore serve` runs: an export over other weights of the
    same width gave rewards off by up to 12 with no warning."""
    from lore_rm.serve.export import export_reward_model

    root, a, b, _, model_dir = fitted
    user = LowRankReward.from_pretrained(model_dir).users_[0]
    with pytest.raises(BackboneMismatchError, match="fingerprint .*--force-backbone"):
        export_reward_model(model_dir, tmp_path / "x", str(b), user=user)
    assert not (tmp_path / "x").exists()
    runner = CliRunner()
    base = ["export", str(model_dir), "--user", user, "--backbone", str(b)]
    res = runner.invoke(cli_app, [*base, "--out", str(tmp_path / "y")])
    assert res.exit_code == 2 and "fingerprint" in res.output and "Traceback" not in res.output
    forced = runner.invoke(cli_app, [*base, "--out", str(tmp_path / "z"), "--force-backbone"])
    assert forced.exit_code == 0, forced.output
    assert "other than the one the model was fitted on" in forced.output
    # the backbone it was fitted on, from another folder, is the same backbone
    copy = root / "a-export-copy"
    if not copy.exists():
        shutil.copytree(a, copy)
    assert export_reward_model(model_dir, tmp_path / "ok", str(copy), user=user).is_dir()
    # another chat template is another backbone too
    other = shutil.copytree(a, tmp_path / "a-template")
    cfg = json.loads((other / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    (other / "tokenizer_config.json").write_text(json.dumps(cfg))
    (other / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(BackboneMismatchError, match="chat_template_sha256"):
        export_reward_model(model_dir, tmp_path / "t", str(other), user=user)


def test_rewardbench_refuses_another_backbone_unless_forced(fitted, tmp_path):
    root, a, b, _, model_dir = fitted
    data = tmp_path / "rb2.jsonl"
    data.write_text(
        json.dumps(
            {"id": "1", "prompt": "tell me", "chosen": ["good answer"],
             "rejected": ["bad", "worse"], "subset": "Focus", "num_correct": 1,
             "num_incorrect": 2, "total_completions": 3, "models": []}
        ) + "\n"
    )  # fmt: skip
    base = ["rewardbench", str(model_dir), "--data", str(data), "--dtype", "fp32",
            "--device", "cpu", "--no-progress"]  # fmt: skip
    runner = CliRunner()
    res = runner.invoke(cli_app, [*base, "--backbone", str(b)])
    assert res.exit_code == 2, res.output
    assert "fingerprint" in res.output and "--force-backbone" in res.output
    forced = runner.invoke(cli_app, [*base, "--backbone", str(b), "--force-backbone"])
    assert forced.exit_code == 0, forced.output
    assert "other than the one the model was fitted on" in forced.output
    same = runner.invoke(cli_app, [*base, "--backbone", str(a)])
    assert same.exit_code == 0, same.output and "other than" not in same.output

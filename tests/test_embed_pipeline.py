"""prepare generic -> embed (tiny reward model) -> fit K = 0 and K = 2 -> rewardbench, by CLI."""

from __future__ import annotations

import json
import random

import pytest
import torch
from tiny_models import WORDS
from typer.testing import CliRunner

from lore_rm import LowRankReward
from lore_rm.cli import app
from lore_rm.embed import EmbeddingStore

pytestmark = pytest.mark.slow  # integration: the CLI pipeline over a reward-model backbone


def test_cli_pipeline_with_a_reward_model_backbone(tiny_reward_model_dir, tiny_backbone, tmp_path):
    rng = random.Random(0)

    def words(k):
        return " ".join(rng.choice(WORDS) for _ in range(k))

    prompts = [words(6) for _ in range(12)]
    rows = []
    for u in range(8):
        for p in rng.sample(prompts, 8):
            rows.append({"prompt": p, "chosen": words(5), "rejected": words(4), "user_id": f"u{u}"})
    src = tmp_path / "prefs.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds, model_dir = tmp_path / "ds", tmp_path / "model"
    runner = CliRunner()

    def ok(*args):
        res = runner.invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, res.output
        return res.output

    ok("prepare", "generic", src, "--out", ds, "--unseen-fraction", "0.25")
    ok(
        "embed",
        ds,
        "--backbone",
        tiny_reward_model_dir,
        "--dtype",
        "fp32",
        "--device",
        "cpu",
        "--shard-size",
        "16",
        "--no-progress",
    )
    store = EmbeddingStore(ds)
    assert store.is_complete and store.backbone["name"] == str(tiny_reward_model_dir)
    ok("fit", ds, "--out", model_dir, "--rank", "0", "--no-progress")
    model = LowRankReward.from_pretrained(model_dir)
    assert model.backbone == str(tiny_reward_model_dir)
    torch.testing.assert_close(model.reference_head_, tiny_backbone.reference_head())

    rb = tmp_path / "rb.jsonl"
    rb.write_text(
        "\n".join(
            json.dumps(
                {
                    "id": str(i),
                    "subset": "Math",
                    "prompt": prompts[i],
                    "chosen": [words(3)],
                    "rejected": [words(3), words(4)],
                }
            )
            for i in range(6)
        )
        + "\n"
    )
    out = tmp_path / "rb.json"
    ok(
        "rewardbench",
        model_dir,
        "--data",
        rb,
        "--dtype",
        "fp32",
        "--device",
        "cpu",
        "--out",
        out,
        "--no-progress",
    )
    scores = json.loads(out.read_text())["heads"]["reference"]
    # by hand from the backbone's own logits
    lines = [json.loads(x) for x in rb.read_text().splitlines()]
    hits = []
    for r in lines:
        conv = [
            [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": t}]
            for t in r["chosen"] + r["rejected"]
        ]
        logit = tiny_backbone.reward_logits(conv)
        hits.append(float(logit[0] > logit[1:].max()))
    assert abs(scores["Math"] - sum(hits) / len(hits)) < 1e-9

"""One real GRPOTrainer step on CPU with lore-rm's reward functions (in-process and through a
served model): the rewards TRL computes and logs are lore-rm's rewards for the completions
it generated, users read from the dataset's ``user_id`` column."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from serve_utils import D, LiveServer, shared_model_dir
from tiny_models import build_tokenizer, tiny_llama_config

from lore_rm import LowRankReward
from lore_rm.embed.hashing import HashingEmbedder
from lore_rm.serve import create_app
from lore_rm.serve.async_rewards import make_async_remote_reward_func, make_async_reward_func
from lore_rm.serve.integrations import make_remote_reward_func, make_reward_func

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow  # a trainer, a generation and a server

PROMPTS = ["tell me a short story", "write a poem about the sea", "explain the sun", "why"]
USERS = ["seen0", "seen1", "ghost", "seen2"]  # "ghost": unknown, scored with mean weights


def _tiny_policy():
    """A random one-layer Llama causal LM over the tiny word-level tokenizer."""
    tok = build_tokenizer(padding_side="left")
    config = tiny_llama_config(tok, hidden_size=16, num_hidden_layers=1, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config), tok


def test_grpo_step_logs_lore_rewards(tmp_path):
    model, embedder = LowRankReward.from_pretrained(shared_model_dir()), HashingEmbedder(D)
    local = make_reward_func(model, embedder, name="lore_local")
    local_async = make_async_reward_func(model, embedder, name="lore_local_async")
    remote_name = "lore_remote"
    policy, tok = _tiny_policy()
    dataset = datasets.Dataset.from_dict({"prompt": PROMPTS, "user_id": USERS})
    args = trl.GRPOConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,  # 4 prompts x 2 generations, one generation call
        num_generations=2,
        max_completion_length=6,
        max_steps=1,
        logging_steps=1,
        learning_rate=1e-4,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        seed=0,
    )
    app = create_app(model, embedder, tmp_path / "db.sqlite")
    with LiveServer(app) as url:
        remote = make_remote_reward_func(url, name=remote_name)
        remote_async = make_async_remote_reward_func(url, name="lore_remote_async")
        trainer = trl.GRPOTrainer(
            model=policy,
            reward_funcs=[local, remote, local_async, remote_async],
            args=args,
            train_dataset=dataset,
            processing_class=tok,
        )
        trainer.train()

    # every completion TRL generated, the prompt it answered and the rewards it recorded
    prompts, completions = trainer._logs["prompt"], trainer._logs["completion"]
    assert len(completions) == 8 and sorted(set(prompts)) == sorted(PROMPTS)
    users = [USERS[PROMPTS.index(p)] for p in prompts]
    conversations = [
        [{"role": "user", "content": p}, {"role": "assistant", "content": c}]
        for p, c in zip(prompts, completions, strict=True)
    ]
    ours = model.reward(embedder.embed(conversations), users, unknown="mean").double().numpy()
    assert np.ptp(ours) > 0  # the completions differ, and so do their rewards
    names = ("lore_local", remote_name, "lore_local_async", "lore_remote_async")
    for name in names:  # TRL awaited the async ones
        logged = np.asarray(trainer._logs["rewards"][name])
        np.testing.assert_allclose(logged, ours, rtol=1e-6, atol=1e-6)

    # the step's logged metrics are the means of those rewards
    (metrics,) = [m for m in trainer.state.log_history if "reward" in m]
    for name in names:
        assert metrics[f"rewards/{name}/mean"] == pytest.approx(ours.mean(), rel=1e-5, abs=1e-6)
    assert metrics["reward"] == pytest.approx(4 * ours.mean(), rel=1e-5, abs=1e-6)

"""docs/ says what the code does: every Python block runs (each doc's blocks in order, in one
namespace, on tiny offline stand-ins where a block names a Hub model), the settings table of
docs/recipes.md is FitConfig's, and the measurements cite only files in the repository.

``python tests/test_docs.py`` prints the settings table."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SKYWORK = "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"
#: blocks for frameworks lore-rm does not depend on: shown, not run (first line -> why)
NOT_RUN = {
    ("embedding.md", "import ray, torch"): "a Ray cluster with GPUs",
    ("embedding.md", "import torch"): "vLLM and a GPU (the block continues the Ray one)",
}


def python_blocks(doc: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / doc).read_text("utf-8"), flags=re.S)


def runnable(doc: str) -> list[str]:
    return [b for b in python_blocks(doc) if (doc, b.splitlines()[0]) not in NOT_RUN]


def run_blocks(doc: str, replace: dict[str, str] | None = None) -> dict:
    scope: dict = {}
    for code in runnable(doc):
        for old, new in (replace or {}).items():
            code = code.replace(old, new)
        exec(compile(code, str(DOCS / doc), "exec"), scope)
    return scope


def test_every_block_is_run_or_named_here():
    every = {(p.name, b.splitlines()[0]) for p in DOCS.glob("*.md") for b in python_blocks(p.name)}
    assert set(NOT_RUN) <= every
    run_here = {"recipes.md", "data.md", "embedding.md", "serving.md"}
    assert {doc for doc, _ in every} <= run_here, "a doc with Python blocks no test runs"


def _prepared(folder: Path) -> Path:
    from lore_rm.data import prepare_generic

    rows = [
        {
            "prompt": f"question {p}",
            "chosen": f"a {'long detailed' if u % 2 else 'short'} answer to {p}",
            "rejected": f"a {'short' if u % 2 else 'long detailed'} answer to {p}",
            "user_id": f"person-{u}",
        }
        for u in range(12)
        for p in range(8)
    ]
    return prepare_generic(rows, folder)


@pytest.mark.slow
def test_recipes_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope = run_blocks("recipes.md")
    assert scope["std"].shape == (5,) and bool((scope["std"] > 0).all())
    assert scope["sel"].rows.shape[1] == 3


def test_data_block_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _prepared(Path("data/prism"))
    scope = run_blocks("data.md")
    assert scope["E"].shape[1] == 384  # MiniLM
    assert scope["model"].rank_ == 2 and len(scope["model"].users_) > 0


def test_embedding_block_runs(tmp_path, monkeypatch, tiny_reward_model_dir):
    monkeypatch.chdir(tmp_path)
    _prepared(Path("data/prism"))
    scope = run_blocks("embedding.md", {SKYWORK: str(tiny_reward_model_dir)})
    assert scope["E"].shape[1] == scope["backbone"].dim and scope["v_ref"] is not None


@pytest.mark.slow
def test_serving_blocks_run(tmp_path, monkeypatch, tiny_reward_model_dir, tiny_backbone):
    """TRL's trainer over a tiny policy, verl's reward hooks, and an exported folder whose
    logit is alice's lore-rm reward."""
    import transformers
    from test_trl import _tiny_policy

    from lore_rm import LowRankReward
    from lore_rm.serve.export import export_reward_model

    monkeypatch.chdir(tmp_path)
    policy, tok = _tiny_policy()
    policy.save_pretrained("policy")
    tok.save_pretrained("policy")
    gen = torch.Generator().manual_seed(0)
    d = tiny_backbone.dim
    model = LowRankReward.from_arrays(
        torch.randn(d, 3, generator=gen),
        torch.softmax(torch.randn(2, 3, generator=gen), -1),
        ["alice", "bob"],
        backbone=str(tiny_reward_model_dir),
    )
    model.save_pretrained("models/prism-k5")
    export_reward_model(model, "alice-rm", str(tiny_reward_model_dir), user="alice")
    scope = run_blocks(
        "serving.md",
        {
            SKYWORK: str(tiny_reward_model_dir),
            '"Qwen/Qwen2.5-0.5B-Instruct"': '"policy"',
            'device="cuda"': 'device="cpu"',
            'GRPOConfig(output_dir="out")': 'GRPOConfig(output_dir="out", use_cpu=True)',
        },
    )
    assert isinstance(scope["trainer"].model, transformers.PreTrainedModel)
    assert callable(scope["compute_score"])
    want = model.reward(tiny_backbone.embed([scope["messages"]]), "alice")
    torch.testing.assert_close(scope["reward"].float(), want[0], rtol=1e-4, atol=1e-4)


def settings_rows() -> list[str]:
    from lore_rm.fit.config import FitConfig

    default, paper = FitConfig.for_recipe("default"), FitConfig.for_recipe("paper")

    def shown(v) -> str:
        if isinstance(v, tuple):
            return ", ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
        return f"{v:g}" if isinstance(v, float) else str(v)

    rows = []
    for f in fields(FitConfig):
        a, b = shown(getattr(default, f.name)), shown(getattr(paper, f.name))
        text = f.metadata["help"].replace("|", "\\|")
        rows.append(f"| `{f.name}` | {a} | {'=' if a == b else b} | {text} |")
    return rows


def test_the_settings_table_is_fitconfigs():
    doc = (DOCS / "recipes.md").read_text("utf-8")
    missing = [row for row in settings_rows() if row not in doc]
    assert not missing, "docs/recipes.md's settings table is stale; `python tests/test_docs.py`"


def test_the_docs_cite_only_files_in_the_repository():
    cited = set()
    for page in [*DOCS.glob("*.md"), ROOT / "README.md"]:
        text = page.read_text("utf-8")
        assert "runs/" not in text, f"{page.name} cites a run log the repository does not hold"
        cited |= set(re.findall(r"\b((?:bench|tests|examples)/[\w/]+\.py)\b", text))
    assert cited and sorted(c for c in cited if not (ROOT / c).is_file()) == []
    measurements = (DOCS / "measurements.md").read_text("utf-8")
    assert "runs/" not in measurements
    for heading in re.findall(r"^## (.*)$", measurements, flags=re.M):
        assert re.search(r"\(\d{4}-\d{2}-\d{2}", heading), f"undated section: {heading}"


if __name__ == "__main__":
    print("\n".join(settings_rows()))

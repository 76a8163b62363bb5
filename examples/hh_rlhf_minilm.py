"""Real text end to end: hh-rlhf pairs, a simulated population of users, MiniLM, LoRe.

hh-rlhf (harmless-base, test split) has one annotator label per pair and no user ids, so
multi-user data needs simulated users. Each simulated user mixes four preference directions
that can be read off the real text of the two responses:

* ``harmless`` — the original hh-rlhf label (the crowd worker's choice);
* ``longer``   — prefers the longer response (log word count);
* ``shorter``  — prefers the shorter one;
* ``cautious`` — prefers the response with more refusal / apology / caution words.

A user's weights ``w ~ Dirichlet(0.3 · 1)`` over these four give it a margin
``m = w · (f(chosen) − f(rejected))`` (features standardised, the label feature ±1); the
user picks a side with probability ``sigmoid(m / 0.1)``. Users therefore disagree on the same
pairs in a structured, low-rank way, the situation LoRe is built for.

Steps: parse the transcripts into messages -> write the simulated users' comparisons in the
generic layout (TRL columns + user_id) -> ``lore prepare generic`` (a third of the users
unseen, 30% of each user's prompts held out, at most ``--shots`` few-shot comparisons per
unseen user) -> embed the unique texts with the MiniLM backbone into the folder's resumable
store -> fit ranks 1..6 -> the four numbers per rank.

    python examples/hh_rlhf_minilm.py [--pairs 600] [--out runs/hh-rlhf-minilm]

A rerun with the same options keeps the dataset folder and its finished embeddings.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import math
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lore_rm import rank_sweep
from lore_rm.data import PreferenceDataset
from lore_rm.data.generic import GenericConfig, prepare_generic
from lore_rm.data.hh_rlhf import read_hh_pairs
from lore_rm.data.layout import COMPARISONS_FILE, DATASET_FILE, TEXTS_FILE
from lore_rm.embed import embed_dataset, load_backbone
from lore_rm.pipeline import load_split

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
HH_FILE = DATA / "hh-rlhf-harmless-base-test.jsonl.gz"
CAUTION = re.compile(
    r"\b(sorry|apologi[sz]e|can't|cannot|won't|not able|illegal|dangerous|harmful|unsafe|"
    r"please don't|i don't think|not appropriate|against the law|seek help)\b",
    re.IGNORECASE,
)
FEATURES = ("harmless", "longer", "shorter", "cautious")


def load_pairs(path: Path, n: int, seed: int) -> list[tuple[list, list]]:
    """``n`` random hh-rlhf pairs as (chosen conversation, rejected conversation)."""
    pairs = read_hh_pairs(path)
    rng = np.random.default_rng(seed)
    keep = rng.choice(len(pairs), size=min(n, len(pairs)), replace=False)
    return [pairs[i] for i in sorted(keep)]


def text_features(conv: list[dict]) -> np.ndarray:
    """(log word count, caution words) of the response being scored."""
    response = conv[-1]["content"]
    return np.array([math.log1p(len(response.split())), len(CAUTION.findall(response))], float)


def simulate_users(pairs, n_users: int, per_user: int, seed: int):
    """Each user's weights over FEATURES and its labels on ``per_user`` random pairs."""
    rng = np.random.default_rng(seed)
    f_c = np.stack([text_features(c) for c, _ in pairs])
    f_r = np.stack([text_features(r) for _, r in pairs])
    diff = f_c - f_r
    diff = diff / diff.std(axis=0).clip(min=1e-9)
    # per pair: harmless (+1: the original chosen), longer, shorter, cautious
    pair_feats = np.column_stack([np.ones(len(pairs)), diff[:, 0], -diff[:, 0], diff[:, 1]])
    weights = rng.dirichlet(0.3 * np.ones(len(FEATURES)), size=n_users)
    records = []
    for u in range(n_users):  # small simulation loop (data preparation, not a hot path)
        seen = rng.choice(len(pairs), size=per_user, replace=False)
        margin = pair_feats[seen] @ weights[u]
        keep_orig = rng.random(per_user) < 1 / (1 + np.exp(-margin / 0.1))
        records += [
            (f"user{u:03d}", int(p), bool(k), bool(k == (m > 0)))
            for p, k, m in zip(seen, keep_orig, margin, strict=True)
        ]
    return weights, records


def write_population_file(path: Path, pairs, records) -> Path:
    """The simulated users' comparisons in the generic (TRL + user column) layout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0: the same population gives the same bytes, so the prepared folder (which records
    # the input's sha256) and its embeddings are reused on a rerun
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
        io.TextIOWrapper(gz, encoding="utf-8") as f,
    ):
        for user, p, keep, _ in records:
            chosen, rejected = pairs[p] if keep else pairs[p][::-1]
            f.write(
                json.dumps(
                    {
                        "chosen": chosen,
                        "rejected": rejected,
                        "user_id": user,
                        "prompt_id": f"hh{p}",
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
    return path


def prepare(source: Path, out: Path, shots: int, seed: int) -> None:
    """``lore prepare generic`` into ``out``; an identical existing folder (and its
    embeddings) is kept, so a rerun costs no embedding."""
    config = GenericConfig(
        prompt_id_column="prompt_id",
        unseen_fraction=1 / 3,
        test_fraction=0.3,
        max_fewshot=shots,
        seed=seed,
    )
    fresh = out.with_name(out.name + ".new")
    prepare_generic([source], fresh, config, overwrite=True)
    same = (out / DATASET_FILE).is_file() and all(
        (out / f).read_bytes() == (fresh / f).read_bytes()
        for f in (DATASET_FILE, TEXTS_FILE, COMPARISONS_FILE)
    )
    if same:
        shutil.rmtree(fresh)
    else:
        if out.exists():
            shutil.rmtree(out)
        fresh.rename(out)


def main() -> None:
    ap = argparse.ArgumentParser(description="hh-rlhf + simulated users + MiniLM + LoRe")
    ap.add_argument("--pairs", type=int, default=600)
    ap.add_argument("--users", type=int, default=90)
    ap.add_argument("--per-user", type=int, default=60, help="pairs each user labels")
    ap.add_argument("--shots", type=int, default=20, help="few-shot comparisons per unseen user")
    ap.add_argument("--ranks", default="1,2,3,4,6")
    ap.add_argument(
        "--weight-decay", type=float, default=None, help="L2 on the basis (default: the recipe's)"
    )
    ap.add_argument("--data", type=Path, default=HH_FILE, help="hh-rlhf .jsonl.gz file")
    ap.add_argument("--max-length", type=int, default=128, help="MiniLM tokens per text")
    ap.add_argument("--out", type=Path, default=Path("runs/hh-rlhf-minilm"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.data.is_file():
        print(f"skipped: {args.data} is absent (the example needs the hh-rlhf test file)")
        return
    torch.manual_seed(args.seed)
    pairs = load_pairs(args.data, args.pairs, args.seed)
    weights, records = simulate_users(pairs, args.users, args.per_user, args.seed)
    source = write_population_file(
        args.out.parent / f"{args.out.name}-users.jsonl.gz", pairs, records
    )
    prepare(source, args.out, args.shots, args.seed)
    counts = PreferenceDataset(args.out).info["counts"]
    print(
        f"dataset folder {args.out} (lore prepare generic): {counts['texts']} unique texts, "
        f"{counts['comparisons']} comparisons by {counts['users']} simulated users"
    )
    agree = np.mean([r[2] for r in records])
    ceiling = np.mean([r[3] for r in records])
    print(
        f"simulated labels agreeing with the original hh-rlhf label: {agree:.3f}; with "
        f"the user's own noiseless preference (the accuracy ceiling): {ceiling:.3f}"
    )
    print("mean user weights over", FEATURES, "=", np.round(weights.mean(axis=0), 3))

    t0 = time.perf_counter()
    backbone = load_backbone(
        "minilm", dtype="fp32", device="auto", batch_size=32, max_length=args.max_length
    )
    report = embed_dataset(args.out, backbone, shard_size=512)
    print(
        f"embedded {report.rows} texts in {time.perf_counter() - t0:.1f} s "
        f"({len(report.skipped)} shard(s) reused)"
    )

    split, _ = load_split(args.out)
    ranks = [int(k) for k in args.ranks.split(",")]
    settings = {} if args.weight_decay is None else {"weight_decay": args.weight_decay}
    rows = rank_sweep(split, ranks, seed=args.seed, **settings)
    print(
        f"\n{'K':>3} {'train':>7} {'seen/unseen prompts':>20} {'few-shot train':>15} "
        f"{'unseen users':>13}  fit s"
    )
    for r in rows:
        print(
            f"{r['rank']:>3} {r['train']:>7.3f} {r['seen_test']:>20.3f} "
            f"{r['fewshot_train']:>15.3f} {r['unseen_test']:>13.3f}  {r['fit_seconds']:.1f}"
        )
    (args.out / "rank_sweep.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nwrote {args.out / 'rank_sweep.json'}")


if __name__ == "__main__":
    sys.exit(main())

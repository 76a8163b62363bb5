"""``lore prepare personalllm``: PersonalLLM (namkoong-lab/PersonalLLM) with simulated users.

Each row is a prompt with ``n_responses`` responses (``response_1`` ...) and, per response,
the score of each reward model (``response_{j}_{name}``; columns are read by name). A
simulated user has weights ``w ~ Dirichlet(alpha * 1)`` over the reward models and prefers,
on a prompt, the response with the highest mixed score ``scores @ w`` over the one with the
lowest. Published protocol (the defaults): 1000 seen users each sample 0.5% of the train
prompts; 500 unseen users sample 0.1% as few-shot data; every user is tested on every test
prompt. The ``n_responses x prompts`` texts are stored (and embedded) once, whatever the
number of users; the simulation is vectorised and works in bounded chunks.

Prompts with a missing prompt, response or score are left out (counted in dataset.json).
A user whose best and worst responses tie (or are the same text) gives no comparison there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from lore_rm.data.hub import resolve
from lore_rm.data.layout import USERS_FILE
from lore_rm.data.sources import SourceFile, find_data_files, name_list
from lore_rm.data.writer import TextTable, categorical, file_digest, message, write_dataset
from lore_rm.errors import DataError
from lore_rm.progress import progress_bar
from lore_rm.protocol import PROTOCOL_ROLES

HUB_NAME = "namkoong-lab/PersonalLLM"
REWARD_MODELS = (
    "gemma_2b",
    "gemma_7b",
    "mistral_raft",
    "llama3_sfairx",
    "oasst_deberta_v3",
    "beaver_7b",
    "oasst_pythia_7b",
    "oasst_pythia_1b",
    "mistral_ray",
    "mistral_weqweasdas",
)
_PAIR_CHUNK = 1 << 16
_USER_CHUNK = 256


@dataclass(frozen=True)
class PersonalLLMConfig:
    """The published PersonalLLM protocol's parameters (defaults = published values).

    seen_users / unseen_users: population sizes.
    alpha: Dirichlet concentration (the same for every reward model).
    seen_rate / unseen_rate: share of train prompts each seen / unseen user answers
        (``int(rate * n_train_prompts)`` distinct prompts per user).
    test_rate: share of test prompts each user is tested on (1.0 = all of them).
    reward_models: names of the score columns mixed by the users' weights.
    n_responses: responses per prompt.
    seed: seeds the population and the sampled prompts.
    """

    seen_users: int = 1000
    unseen_users: int = 500
    alpha: float = 0.1
    seen_rate: float = 0.005
    unseen_rate: float = 0.001
    test_rate: float = 1.0
    reward_models: tuple[str, ...] = REWARD_MODELS
    n_responses: int = 8
    seed: int = 0


@dataclass
class _Split:
    name: str
    files: list[Path]
    prompt_names: list[str]
    text_ids: np.ndarray  # (P, R) rows of the text table
    scores: np.ndarray  # (P, R, M) float64


def _columns(src: SourceFile, cfg: PersonalLLMConfig) -> tuple[list[str], list[str], bool]:
    """(response columns, score columns in (response, model) order, has prompt_id)."""
    R = cfg.n_responses
    responses = [f"response_{j}" for j in range(1, R + 1)]
    scores = [f"response_{j}_{rm}" for j in range(1, R + 1) for rm in cfg.reward_models]
    cols = src.columns()
    if cols is None:  # JSON: no schema up front
        cols = src.table().column_names
    missing = [c for c in ["prompt", *responses, *scores] if c not in cols]
    if missing:
        raise DataError(f"{src.path}: missing column(s) {name_list(missing)}")
    return responses, scores, "prompt_id" in cols


def _read_split(
    name: str, files: Sequence[Path], cfg: PersonalLLMConfig, texts: TextTable, dropped: dict
) -> _Split:
    """Read prompts batch by batch: scores into one array, every response into ``texts``."""
    R, M = cfg.n_responses, len(cfg.reward_models)
    names: list[str] = []
    taken: set[str] = set()
    ids, scores = [], []
    for path in files:
        src = SourceFile(path)
        responses, score_cols, has_id = _columns(src, cfg)
        wanted = ["prompt", *responses, *score_cols] + (["prompt_id"] if has_id else [])
        row = 0
        for batch in src.batches(wanted, rows=1024):
            n = batch.num_rows
            s = np.empty((n, R * M), dtype=np.float64)
            for k, c in enumerate(score_cols):
                try:
                    col = batch.column(c).cast(pa.float64())
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise DataError(f"{path}: column {c!r} is not numeric ({e})") from None
                s[:, k] = col.to_numpy(zero_copy_only=False)
            prompts = batch.column("prompt").to_pylist()
            resp = [batch.column(c).to_pylist() for c in responses]
            pids = batch.column("prompt_id").to_pylist() if has_id else [None] * n
            ok = np.isfinite(s).all(axis=1)
            ok &= np.array([isinstance(x, str) and bool(x.strip()) for x in prompts], bool)
            for r in resp:
                ok &= np.array([isinstance(x, str) for x in r], dtype=bool)
            dropped[f"{name}_prompts_incomplete"] += int((~ok).sum())
            rows = np.flatnonzero(ok)
            t = np.empty((rows.size, R), dtype=np.int64)
            for i, p in enumerate(rows.tolist()):
                pid = f"{name}/{pids[p] if pids[p] is not None else row + p}"
                if pid in taken:  # the source repeats an id: make it unique
                    pid = f"{pid}#{path.name}:{row + p + 1}"
                taken.add(pid)
                names.append(pid)
                prompt = [message("user", prompts[p])]
                t[i] = [texts.add(prompt, message("assistant", r[p]), pid) for r in resp]
            ids.append(t)
            scores.append(s[ok].reshape(-1, R, M))
            row += n
    pa.default_memory_pool().release_unused()  # the decoded row groups are gone
    if not names:
        raise DataError(f"no complete {name} prompts in {', '.join(map(str, files))}")
    return _Split(name, list(files), names, np.concatenate(ids), np.concatenate(scores))


def sample_prompts(n_users: int, n_prompts: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """(n_users * k,) prompt indices: k distinct random prompts per user, ascending."""
    if k >= n_prompts:
        return np.tile(np.arange(n_prompts), n_users)
    out = np.empty((n_users, k), dtype=np.int64)
    for start in range(0, n_users, _USER_CHUNK):  # bounded memory: chunk x n_prompts keys
        keys = rng.random((min(_USER_CHUNK, n_users - start), n_prompts))
        out[start : start + keys.shape[0]] = np.sort(np.argpartition(keys, k - 1, axis=1)[:, :k])
    return out.reshape(-1)


def best_vs_worst(
    scores: np.ndarray, weights: np.ndarray, users: np.ndarray, prompts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each (user, prompt) pair: (best response, worst response, strict?) under the
    user's mixed scores ``scores[p] @ weights[u]``; first index on ties."""
    n = users.size
    best = np.empty(n, dtype=np.int64)
    worst = np.empty(n, dtype=np.int64)
    strict = np.empty(n, dtype=bool)
    for start in range(0, n, _PAIR_CHUNK):
        sl = slice(start, start + _PAIR_CHUNK)
        mixed = np.einsum("nrm,nm->nr", scores[prompts[sl]], weights[users[sl]])
        best[sl] = mixed.argmax(axis=1)
        worst[sl] = mixed.argmin(axis=1)
        strict[sl] = mixed.max(axis=1) > mixed.min(axis=1)
    return best, worst, strict


def _locate(root: Path, split: str) -> list[Path]:
    files = find_data_files(root, split)
    if not files:
        raise DataError(f"{root}: no {split} files found (expected e.g. data/{split}-*.parquet)")
    return files


def prepare_personalllm(
    source: str | Path | None,
    out: str | Path,
    config: PersonalLLMConfig | None = None,
    *,
    train: Sequence[str | Path] = (),
    test: Sequence[str | Path] = (),
    overwrite: bool = False,
    discard_embeddings: bool = False,
    progress: bool = False,
) -> Path:
    """Simulate the PersonalLLM population and write the dataset folder."""
    cfg = config or PersonalLLMConfig()
    if cfg.alpha <= 0 or cfg.seen_users < 1 or cfg.unseen_users < 0:
        raise DataError("alpha must be positive, seen_users at least 1, unseen_users >= 0")
    if not train or not test:
        root = resolve(source, "PersonalLLM", allow_patterns=["data/*"])
        train = train or _locate(root, "train")
        test = test or _locate(root, "test")
    texts = TextTable()
    dropped = {"train_prompts_incomplete": 0, "test_prompts_incomplete": 0}
    bar = progress_bar(4, "PersonalLLM", progress)
    tr = _read_split("train", [Path(p) for p in train], cfg, texts, dropped)
    te = _read_split("test", [Path(p) for p in test], cfg, texts, dropped)
    bar.update(2)

    rng = np.random.default_rng(cfg.seed)
    M = len(cfg.reward_models)
    w_seen = rng.dirichlet(np.full(M, cfg.alpha), cfg.seen_users)
    w_unseen = rng.dirichlet(np.full(M, cfg.alpha), cfg.unseen_users)
    n_tr = len(tr.prompt_names)
    parts = []
    plan = [
        (w_seen, 0, tr, cfg.seen_rate, "seen-train"),
        (w_seen, 0, te, cfg.test_rate, "seen-test"),
        (w_unseen, cfg.seen_users, tr, cfg.unseen_rate, "unseen-fewshot"),
        (w_unseen, cfg.seen_users, te, cfg.test_rate, "unseen-test"),
    ]
    for weights, offset, split, rate, role in plan:
        n_users = weights.shape[0]
        k = int(rate * len(split.prompt_names))
        if n_users and k < 1:
            raise DataError(
                f"{role}: rate {rate} of {len(split.prompt_names)} prompts gives no prompt per user"
            )
        prompts = sample_prompts(n_users, len(split.prompt_names), k, rng)
        users = np.repeat(np.arange(n_users), k)
        best, worst, strict = best_vs_worst(split.scores, weights, users, prompts)
        chosen, rejected = split.text_ids[prompts, best], split.text_ids[prompts, worst]
        keep = strict & (chosen != rejected)
        dropped[f"{role}_ties"] = int((~keep).sum())
        parts.append(
            {
                "user": (users[keep] + offset).astype(np.int32),
                "prompt": (prompts[keep] + (0 if split is tr else n_tr)).astype(np.int32),
                "chosen": chosen[keep],
                "rejected": rejected[keep],
                "role": np.full(int(keep.sum()), PROTOCOL_ROLES.index(role), dtype=np.int8),
                "best": (best[keep] + 1).astype(np.int8),
                "worst": (worst[keep] + 1).astype(np.int8),
            }
        )
    bar.update(1)
    cat = {k: np.concatenate([p.pop(k) for p in parts]) for k in list(parts[0])}
    width = max(4, len(str(max(cfg.seen_users, cfg.unseen_users) - 1)))
    user_names = [f"seen-{i:0{width}d}" for i in range(cfg.seen_users)]
    user_names += [f"unseen-{i:0{width}d}" for i in range(cfg.unseen_users)]
    table = {
        "user_id": categorical(cat["user"], user_names),
        "prompt_id": categorical(cat["prompt"], tr.prompt_names + te.prompt_names),
        "chosen": cat["chosen"],
        "rejected": cat["rejected"],
        "split": categorical(cat["role"], PROTOCOL_ROLES),
        "chosen_response": cat["best"],
        "rejected_response": cat["worst"],
    }
    weights = np.concatenate([w_seen, w_unseen]).reshape(-1)
    users_table = pa.table(
        {
            "user_id": pa.array(user_names, pa.string()),
            "population": categorical(
                np.r_[np.zeros(cfg.seen_users, int), np.ones(cfg.unseen_users, int)],
                ["seen", "unseen"],
            ),
            "weights": pa.FixedSizeListArray.from_arrays(pa.array(weights), M),
        }
    )
    params = asdict(cfg)
    params["reward_models"] = list(cfg.reward_models)
    path = write_dataset(
        out,
        table,
        texts,
        source=HUB_NAME,
        protocol="lore-personalllm",
        parameters=params,
        seed=cfg.seed,
        inputs=[file_digest(p) for p in tr.files + te.files],
        dropped=dropped,
        extra_files={USERS_FILE: users_table},
        overwrite=overwrite,
        discard_embeddings=discard_embeddings,
    )
    bar.update(1)
    bar.close()
    return path

"""``lore prepare tldr``: Reddit TLDR (openai/summarize_from_feedback, comparisons).

Reads the original ``comparisons/batch*.json`` JSON Lines files, the Hub's parquet
conversion (``train`` / ``validation``) or anything else with the same fields. Rows without
a Reddit post (CNN/DM batches) are left out. The conversation of a summary is
``[user: post, assistant: summary]`` (both stripped of surrounding whitespace).

Protocol (published defaults): in each split the ``drop_smallest`` workers with the fewest
comparisons are dropped; workers present in both splits are shuffled and split in half, seen
and unseen; seen workers train on at most ``train_cap`` random train-split comparisons,
unseen workers use at most ``fewshot_cap`` as their few-shot pool; both are tested on all
their validation comparisons. (The published script shuffled a Python set, whose order varies
between runs; here workers are sorted first, so a seed gives one split.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lore_rm.data.assign import ROLE_CODES, cap_per_group, factorize, roles_from
from lore_rm.data.hub import fetch, looks_like_hub_name
from lore_rm.data.sources import SourceFile, expand_inputs, split_of_name
from lore_rm.data.writer import TextTable, categorical, file_digest, message, write_dataset
from lore_rm.errors import DataError
from lore_rm.progress import progress_bar
from lore_rm.protocol import PROTOCOL_ROLES

HUB_NAME = "openai/summarize_from_feedback"
TRAIN_SPLITS = ("train",)
VALID_SPLITS = ("valid1", "valid2", "validation", "valid")


@dataclass(frozen=True)
class TLDRConfig:
    """The published TLDR protocol's parameters (defaults = published values).

    seen_fraction: share of the workers present in both splits who are seen workers.
    train_cap: most train-split comparisons a seen worker trains on (None = all).
    fewshot_cap: most train-split comparisons in an unseen worker's few-shot pool
        (published 50; 100 for the shots sweep).
    drop_smallest: in each split, how many workers with the fewest comparisons are dropped.
    seed: seeds the worker shuffle and the capped samples.
    """

    seen_fraction: float = 0.5
    train_cap: int | None = 150
    fewshot_cap: int | None = 50
    drop_smallest: int = 2
    seed: int = 0


def _row_split(rec: dict, src: SourceFile, row: int) -> str | None:
    """'train', 'valid' or None (another split, left out)."""
    split = rec.get("split")
    if split is None:
        split = split_of_name(src.path, ("train", "validation", "valid"))
        if split is None:
            raise src.error(
                row, "no 'split' field, and the file name does not say train or validation"
            )
    if split in TRAIN_SPLITS:
        return "train"
    if split in VALID_SPLITS:
        return "valid"
    return None


def _summaries(rec: dict, src: SourceFile, row: int) -> tuple[str, str]:
    summaries, choice = rec.get("summaries"), rec.get("choice")
    if not isinstance(summaries, list) or len(summaries) != 2:
        raise src.error(row, "'summaries' must be a list of two summaries")
    texts = []
    for i, s in enumerate(summaries):
        text = s.get("text") if isinstance(s, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise src.error(row, f"summaries[{i}] has no text")
        texts.append(text.strip())
    if isinstance(choice, bool) or choice not in (0, 1):
        raise src.error(row, f"'choice' must be 0 or 1, got {choice!r}")
    return texts[choice], texts[1 - choice]


def read_tldr(files: Sequence[Path], *, progress: bool = False):
    """Parse rows into (texts, per-row arrays, dropped counts)."""
    texts = TextTable()
    cols: dict[str, list] = {
        k: [] for k in ("worker", "prompt", "c", "r", "train", "batch", "split", "file", "row")
    }
    dropped = {"cnndm_or_no_post": 0, "other_split": 0, "identical_summaries": 0}
    bar = progress_bar(len(files), "reading TLDR files", progress)
    for k, path in enumerate(files):
        src = SourceFile(path)
        for row, rec in src.records():
            info = rec.get("info")
            info = info if isinstance(info, dict) else {}
            batch = str(rec.get("batch") or src.path.name.split(".")[0])
            post = info.get("post")
            if "cnndm" in batch or not isinstance(post, str) or not post.strip():
                dropped["cnndm_or_no_post"] += 1
                continue
            split = _row_split(rec, src, row)
            if split is None:
                dropped["other_split"] += 1
                continue
            worker = rec.get("worker")
            if not isinstance(worker, str) or not worker:
                raise src.error(row, f"'worker' must be a non-empty string, got {worker!r}")
            chosen, rejected = _summaries(rec, src, row)
            if chosen == rejected:
                dropped["identical_summaries"] += 1
                continue
            prompt = [message("user", post.strip())]
            pid = str(info["id"]) if info.get("id") is not None else texts.prompt_id(prompt)
            cols["worker"].append(worker)
            cols["prompt"].append(pid)
            cols["c"].append(texts.add(prompt, message("assistant", chosen), pid))
            cols["r"].append(texts.add(prompt, message("assistant", rejected), pid))
            cols["train"].append(split == "train")
            cols["batch"].append(batch)
            cols["split"].append(str(rec.get("split") or split))
            cols["file"].append(k)
            cols["row"].append(row)
        bar.update(1)
    bar.close()
    return texts, cols, dropped


def _smallest(workers: np.ndarray, n_workers: int, drop: int) -> np.ndarray:
    """Bool mask of the ``drop`` workers with the fewest rows (ties: first seen first)."""
    out = np.zeros(n_workers, dtype=bool)
    if drop <= 0 or workers.size == 0:
        return out
    present, first = np.unique(workers, return_index=True)
    counts = np.bincount(workers, minlength=n_workers)[present]
    out[present[np.lexsort((first, counts))[:drop]]] = True
    return out


def tldr_roles(
    worker: np.ndarray, train: np.ndarray, n_workers: int, cfg: TLDRConfig, rng: np.random.Generator
) -> tuple[np.ndarray, dict]:
    """Role code per row (-1 = left out) and counts of what was left out."""
    in_train = np.bincount(worker[train], minlength=n_workers) > 0
    in_valid = np.bincount(worker[~train], minlength=n_workers) > 0
    small = _smallest(worker[train], n_workers, cfg.drop_smallest)
    small |= _smallest(worker[~train], n_workers, cfg.drop_smallest)
    both = in_train & in_valid & ~small
    eligible = np.flatnonzero(both)  # sorted worker codes
    order = eligible[rng.permutation(eligible.size)]
    unseen = np.zeros(n_workers, dtype=bool)
    unseen[order[int(eligible.size * cfg.seen_fraction) :]] = True
    roles = roles_from(unseen[worker], ~train)
    keep = both[worker]
    keep &= cap_per_group(worker, cfg.train_cap, rng, keep & (roles == ROLE_CODES["seen-train"]))
    keep &= cap_per_group(
        worker, cfg.fewshot_cap, rng, keep & (roles == ROLE_CODES["unseen-fewshot"])
    )
    dropped = {
        "worker_not_in_both_splits": int((~(in_train & in_valid))[worker].sum()),
        "worker_dropped_smallest": int((small & in_train & in_valid)[worker].sum()),
        "over_cap": int((both[worker] & ~keep).sum()),
    }
    return np.where(keep, roles, -1), dropped


def prepare_tldr(
    sources: Sequence[str | Path],
    out: str | Path,
    config: TLDRConfig | None = None,
    *,
    overwrite: bool = False,
    discard_embeddings: bool = False,
    progress: bool = False,
) -> Path:
    """Prepare the TLDR protocol from local files / folders or the Hub name."""
    cfg = config or TLDRConfig()
    if len(sources) == 1 and looks_like_hub_name(sources[0]):
        sources = [
            fetch(
                str(sources[0]),
                allow_patterns=["comparisons/*"],
                revision="refs/convert/parquet",
                config="comparisons",
            )
        ]
    files = expand_inputs(sources, "TLDR comparison")
    texts, cols, dropped = read_tldr(files, progress=progress)
    if not cols["worker"]:
        raise DataError(f"no usable Reddit TLDR comparisons in {', '.join(map(str, sources))}")
    worker, names = factorize(np.array(cols["worker"], dtype=object))
    train = np.array(cols["train"], dtype=bool)
    roles, more = tldr_roles(worker, train, len(names), cfg, np.random.default_rng(cfg.seed))
    dropped.update(more)
    keep = roles >= 0
    batch, batch_names = factorize(np.array(cols["batch"], dtype=object))
    split, split_names = factorize(np.array(cols["split"], dtype=object))
    table = {
        "user_id": categorical(worker[keep], list(names)),
        "prompt_id": np.array(cols["prompt"], dtype=object)[keep].tolist(),
        "chosen": np.array(cols["c"], dtype=np.int64)[keep],
        "rejected": np.array(cols["r"], dtype=np.int64)[keep],
        "split": categorical(roles[keep], PROTOCOL_ROLES),
        "batch": categorical(batch[keep], list(batch_names)),
        "source_split": categorical(split[keep], list(split_names)),
        "source_file": categorical(np.array(cols["file"])[keep], [f.name for f in files]),
        "source_row": np.array(cols["row"], dtype=np.int64)[keep],
    }
    return write_dataset(
        out,
        table,
        texts,
        source=HUB_NAME,
        protocol="lore-tldr",
        parameters=asdict(cfg),
        seed=cfg.seed,
        inputs=[file_digest(f) for f in files],
        dropped=dropped,
        overwrite=overwrite,
        discard_embeddings=discard_embeddings,
    )

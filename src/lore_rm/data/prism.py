"""``lore prepare prism``: PRISM (HannahRoseKirk/prism-alignment: survey + conversations).

Each turn of a dialog has one user utterance and model responses (role ``"model"``, read as
``"assistant"``) marked ``if_chosen``. A turn is *complete* with one user utterance, exactly
one chosen response and at least one rejected one; it gives one comparison per (chosen,
rejected) pair, each side one proper message, the prompt being the dialog so far (earlier
turns continued with their chosen response; with several marked chosen the first, with none
the highest-scored). This fixes the published preparation, which put every rejected
response of a turn into one message holding a list.

The survey's fields of every kept user go to the users table (``users.parquet``), nested
objects flattened one level (``location`` -> ``location_birth_country``, ...).

Protocol (published defaults, same random stream as the published preparation): survey
users with no completed conversation are skipped; dialogs with no complete turn are removed,
and a user whose last dialog is removed goes too; users are shuffled (numpy seed 123),
80% seen and 20% unseen; only users with more than 5 dialogs are kept; each kept user's
dialogs are shuffled and split 50/50 into train (few-shot for unseen users) and test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lore_rm.data.hub import resolve
from lore_rm.data.layout import USERS_FILE
from lore_rm.data.sources import SourceFile, find_data_files
from lore_rm.data.users import flatten_attributes, users_table
from lore_rm.data.writer import Message, TextTable, categorical, file_digest, message, write_dataset
from lore_rm.errors import DataError
from lore_rm.progress import progress_bar
from lore_rm.protocol import PROTOCOL_ROLES

HUB_NAME = "HannahRoseKirk/prism-alignment"


@dataclass(frozen=True)
class PRISMConfig:
    """The published PRISM protocol's parameters (defaults = published values).

    seen_fraction: share of the shuffled users who are seen users.
    min_dialogs: users need MORE than this many dialogs (after filtering) to be kept.
    train_fraction: share of a user's shuffled dialogs on the train / few-shot side.
    seed: numpy seed of the user and dialog shuffles.
    """

    seen_fraction: float = 0.8
    min_dialogs: int = 5
    train_fraction: float = 0.5
    seed: int = 123


@dataclass
class _Turn:
    user: list[str]
    responses: list[tuple[str, bool, float]]  # (content, if_chosen, score)

    def chosen_rejected(self) -> tuple[list[str], list[str]]:
        chosen = [c for c, ch, _ in self.responses if ch]
        rejected = [c for c, ch, _ in self.responses if not ch]
        return chosen, rejected

    @property
    def complete(self) -> bool:
        chosen, rejected = self.chosen_rejected()
        return len(self.user) == 1 and len(chosen) == 1 and len(rejected) >= 1

    def continuation(self) -> str | None:
        """The response the dialog went on with."""
        chosen, _ = self.chosen_rejected()
        if chosen:
            return chosen[0]
        if not self.responses:
            return None
        best = max(range(len(self.responses)), key=lambda i: (self.responses[i][2], -i))
        return self.responses[best][0]


def _score(v) -> float:
    return float(v) if isinstance(v, int | float) and not math.isnan(v) else -math.inf


def _parse_dialog(rec: dict, src: SourceFile, row: int) -> list[tuple[int, _Turn]]:
    history = rec.get("conversation_history")
    if not isinstance(history, list):
        raise src.error(row, "'conversation_history' must be a list")
    turns: dict[int, _Turn] = {}
    for i, item in enumerate(history):
        if not isinstance(item, dict):
            raise src.error(row, f"conversation_history[{i}] is not an object")
        turn, role, content = item.get("turn"), item.get("role"), item.get("content")
        if isinstance(turn, bool) or not isinstance(turn, int) or turn < 0:
            raise src.error(row, f"conversation_history[{i}] has no valid 'turn' ({turn!r})")
        if not isinstance(role, str) or not isinstance(content, str):
            raise src.error(row, f"conversation_history[{i}] needs string 'role' and 'content'")
        t = turns.setdefault(turn, _Turn([], []))
        if role == "user":
            t.user.append(content)
        else:
            t.responses.append((content, item.get("if_chosen") is True, _score(item.get("score"))))
    return sorted(turns.items())


def _comparisons(turns: list[tuple[int, _Turn]]):
    """Yield (turn, prompt messages, chosen text, rejected text) for complete turns."""
    context: list[Message] = []
    for number, turn in turns:
        context.extend(message("user", u) for u in turn.user)
        if turn.complete:
            (chosen,), rejected = turn.chosen_rejected()
            for r in rejected:
                yield number, list(context), chosen, r
        cont = turn.continuation()
        if cont is not None:
            context.append(message("assistant", cont))


def _locate(source: Path, name: str) -> Path:
    found = [p for p in find_data_files(source) if p.name.split(".")[0] == name]
    if not found:
        raise DataError(f"{source}: no {name}.jsonl (or .parquet) found in this folder")
    return found[0]


def prepare_prism(
    source: str | Path | None,
    out: str | Path,
    config: PRISMConfig | None = None,
    *,
    survey: str | Path | None = None,
    conversations: str | Path | None = None,
    overwrite: bool = False,
    discard_embeddings: bool = False,
    progress: bool = False,
) -> Path:
    """Prepare PRISM from a folder holding survey.jsonl and conversations.jsonl (or the Hub
    name, or the two files given explicitly)."""
    cfg = config or PRISMConfig()
    if survey is None or conversations is None:
        root = resolve(source, "PRISM", allow_patterns=["survey.jsonl", "conversations.jsonl"])
        survey = survey or _locate(root, "survey")
        conversations = conversations or _locate(root, "conversations")
    survey_src, conv_src = SourceFile(survey), SourceFile(conversations)

    # users, in survey order, with their dialogs in conversation-file order
    user_dialogs: dict[str, list[str | None]] = {}  # None: a removed dialog
    attributes = {}  # the survey's fields, for the users table
    for row, rec in survey_src.records():
        uid = rec.get("user_id")
        if not isinstance(uid, str):
            raise survey_src.error(row, f"'user_id' must be a string, got {uid!r}")
        if rec.get("num_completed_conversations") == 0:
            continue
        user_dialogs[uid] = []
        # order_stated_prefs: where the survey displayed each question, not about the user
        attributes[uid] = flatten_attributes(rec, exclude=("user_id", "order_stated_prefs"))
    dialogs: dict[str, tuple[str, list]] = {}
    dropped = {
        "dialogs_without_survey_user": 0,
        "dialogs_without_complete_turn": 0,
        "users_without_dialog": 0,
        "users_with_few_dialogs": 0,
        "identical_responses": 0,
    }
    bar = progress_bar(0, "reading PRISM dialogs", progress)
    for row, rec in conv_src.records():
        cid, uid = rec.get("conversation_id"), rec.get("user_id")
        if not isinstance(cid, str) or not isinstance(uid, str):
            raise conv_src.error(row, "'conversation_id' and 'user_id' must be strings")
        if cid in dialogs:
            raise conv_src.error(row, f"conversation_id {cid!r} appears twice")
        if uid not in user_dialogs:
            dropped["dialogs_without_survey_user"] += 1
            continue
        comps = list(_comparisons(_parse_dialog(rec, conv_src, row)))
        if not comps:
            dropped["dialogs_without_complete_turn"] += 1
            user_dialogs[uid].append(None)  # marks a removed dialog
            continue
        dialogs[cid] = (uid, comps)
        user_dialogs[uid].append(cid)
        bar.update(1)
    bar.close()
    # a user is removed when their last dialog is removed (as published)
    for uid in list(user_dialogs):
        ids = user_dialogs[uid]
        remaining: list[str | None] = [c for c in ids if c is not None]
        if ids and not remaining:
            del user_dialogs[uid]
            dropped["users_without_dialog"] += 1
        else:
            user_dialogs[uid] = remaining

    rs = np.random.RandomState(cfg.seed)
    users = np.array(list(user_dialogs), dtype=object)
    rs.shuffle(users)
    n_seen = int(len(users) * cfg.seen_fraction)
    role_of_dialog: dict[str, int] = {}
    for pos, uid in enumerate(users):
        shuffled = np.array(user_dialogs[uid], dtype=object)
        if len(shuffled) <= cfg.min_dialogs:
            dropped["users_with_few_dialogs"] += 1
            continue
        rs.shuffle(shuffled)
        n_train = int(len(shuffled) * cfg.train_fraction)
        base = 0 if pos < n_seen else 2
        for j, cid in enumerate(shuffled):
            role_of_dialog[cid] = base + (j >= n_train)

    texts = TextTable()
    cols: dict[str, list] = {k: [] for k in ("user", "prompt", "c", "r", "role", "conv", "turn")}
    for cid, (uid, comps) in dialogs.items():  # conversation-file order
        role = role_of_dialog.get(cid)
        if role is None:
            continue
        for turn, prompt, chosen, rejected in comps:
            if chosen == rejected:
                dropped["identical_responses"] += 1
                continue
            pid = f"{cid}:{turn}"
            cols["user"].append(uid)
            cols["prompt"].append(pid)
            cols["c"].append(texts.add(prompt, message("assistant", chosen), pid))
            cols["r"].append(texts.add(prompt, message("assistant", rejected), pid))
            cols["role"].append(role)
            cols["conv"].append(cid)
            cols["turn"].append(turn)
    if not cols["user"]:
        raise DataError(f"no PRISM comparisons left after filtering ({survey}, {conversations})")
    table = {
        "user_id": cols["user"],
        "prompt_id": cols["prompt"],
        "chosen": np.array(cols["c"], dtype=np.int64),
        "rejected": np.array(cols["r"], dtype=np.int64),
        "split": categorical(np.array(cols["role"]), PROTOCOL_ROLES),
        "conversation_id": cols["conv"],
        "turn": np.array(cols["turn"], dtype=np.int64),
    }
    kept = sorted(set(cols["user"]))
    unseen = [role_of_dialog[str(user_dialogs[u][0])] >= 2 for u in kept]
    return write_dataset(
        out,
        table,
        texts,
        extra_files={USERS_FILE: users_table(kept, unseen, attributes)},
        source=HUB_NAME,
        protocol="lore-prism",
        parameters=asdict(cfg),
        seed=cfg.seed,
        inputs=[file_digest(survey_src.path), file_digest(conv_src.path)],
        dropped=dropped,
        overwrite=overwrite,
        discard_embeddings=discard_embeddings,
    )


__all__: Sequence[str] = ("PRISMConfig", "prepare_prism")

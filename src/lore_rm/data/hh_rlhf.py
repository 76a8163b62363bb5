"""Anthropic hh-rlhf pairs (``{"chosen": transcript, "rejected": transcript}`` JSON lines).

A transcript is ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``; :func:`read_hh_pairs` returns the
well-formed pairs as (chosen conversation, rejected conversation).
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

from lore_rm.conversation import Conversation

TURN = re.compile(r"\n\n(Human|Assistant): ")


def parse_transcript(text: str) -> Conversation:
    """'\\n\\nHuman: ... \\n\\nAssistant: ...' -> [{"role", "content"}, ...]."""
    parts = TURN.split(text)
    return [
        {"role": "user" if role == "Human" else "assistant", "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def read_hh_pairs(path: str | Path) -> list[tuple[Conversation, Conversation]]:
    """Every well-formed pair of the (optionally gzipped) JSON-lines file ``path``.

    Dropped: pairs whose transcripts do not end in an assistant turn, do not share their
    prompt, give the same answer, or hold an empty turn (a few real transcripts do).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    pairs = []
    for row in rows:
        c, r = parse_transcript(row["chosen"]), parse_transcript(row["rejected"])
        if (
            len(c) >= 2
            and c[-1]["role"] == "assistant"
            and r
            and r[-1]["role"] == "assistant"
            and c[:-1] == r[:-1]
            and c[-1] != r[-1]
            and all(m["content"] for m in c + r)
        ):
            pairs.append((c, r))
    return pairs

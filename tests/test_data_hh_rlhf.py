"""The hh-rlhf reader shared by the example and the accuracy benchmark."""

from __future__ import annotations

import gzip
import json

from lore_rm.data.hh_rlhf import parse_transcript, read_hh_pairs


def test_transcripts_and_the_well_formed_pairs(tmp_path):
    prompt = "\n\nHuman: how do I bake bread?"
    rows = [
        {"chosen": prompt + "\n\nAssistant: Knead it.", "rejected": prompt + "\n\nAssistant: No."},
        {"chosen": prompt + "\n\nAssistant: Same.", "rejected": prompt + "\n\nAssistant: Same."},
        {"chosen": prompt + "\n\nAssistant: A", "rejected": "\n\nHuman: other\n\nAssistant: B"},
        {"chosen": prompt + "\n\nAssistant: ", "rejected": prompt + "\n\nAssistant: B"},
    ]
    path = tmp_path / "hh.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    assert parse_transcript(rows[0]["chosen"]) == [
        {"role": "user", "content": "how do I bake bread?"},
        {"role": "assistant", "content": "Knead it."},
    ]
    ((chosen, rejected),) = read_hh_pairs(path)  # same answer, other prompt, empty turn: out
    assert chosen[-1]["content"] == "Knead it." and rejected[-1]["content"] == "No."

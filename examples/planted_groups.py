"""A planted population with groups: one region's preference differs from the majority's.

Every comparison offers two answers that differ in two ways at once: one is detailed, the
other brief, and one is casual, the other formal (which is which is drawn at random). Users
of the ``north`` region prefer the detailed answer, users of the ``south`` region (the
minority) the casual one; each label is flipped with probability ``--noise``. Where the
detailed answer is also the casual one both regions agree, elsewhere they disagree, so one
pooled reward follows the majority and serves the south badly, while a rank-2 basis with
personal weights can serve both. ``age`` is drawn independently of the preference.

Writes DIR/prefs.jsonl (the generic layout: prompt, chosen, rejected, user_id) and
DIR/users.csv (user_id, region, age), then prints the commands that run the group report:

    python examples/planted_groups.py planted
    lore prepare generic planted/prefs.jsonl --out planted/ds --user-attributes planted/users.csv
    lore embed planted/ds --backbone hashing-256
    lore evaluate planted/ds --ranks 1,2 --shots '' --group-by region,age --out planted/report
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

TOPICS = ["apples", "trains", "poems", "rivers", "chess", "bread", "clouds", "violins"]


def answer(topic: str, detailed: bool, casual: bool) -> str:
    opening = "hey mate, so" if casual else "Dear reader, please note that"
    body = (
        f"{topic} are fascinating because each one has a long history, many uses and a "
        "detailed story worth telling step by step"
        if detailed
        else f"{topic} are nice"
    )
    return f"{opening} {body}{' cheers' if casual else '. Kind regards'}."


def population(n_north: int, n_south: int, per_user: int, noise: float, seed: int):
    """(comparison rows, user rows)."""
    rng = random.Random(seed)
    rows, users = [], []
    for u in range(n_north + n_south):
        region = "north" if u < n_north else "south"
        uid = f"user{u:03d}"
        users.append({"user_id": uid, "region": region, "age": rng.choice(["18-34", "35+"])})
        for j in range(per_user):
            topic = rng.choice(TOPICS)
            detailed_is_casual = rng.random() < 0.5
            a = answer(topic, detailed=True, casual=detailed_is_casual)
            b = answer(topic, detailed=False, casual=not detailed_is_casual)
            likes_a = detailed_is_casual if region == "south" else True
            if rng.random() < noise:
                likes_a = not likes_a
            chosen, rejected = (a, b) if likes_a else (b, a)
            prompt = f"Tell me about {topic} (question {j})"
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "user_id": uid})
    return rows, users


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out", type=Path, help="Folder to write prefs.jsonl and users.csv into.")
    ap.add_argument("--north", type=int, default=36, help="Users of the majority region.")
    ap.add_argument("--south", type=int, default=12, help="Users of the minority region.")
    ap.add_argument("--per-user", type=int, default=40, help="Comparisons per user.")
    ap.add_argument("--noise", type=float, default=0.1, help="Share of labels flipped.")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows, users = population(args.north, args.south, args.per_user, args.noise, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "prefs.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(args.out / "users.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["user_id", "region", "age"])
        w.writeheader()
        w.writerows(users)
    d = args.out
    print(f"wrote {d}/prefs.jsonl ({len(rows)} comparisons) and {d}/users.csv ({len(users)} users)")
    print(f"lore prepare generic {d}/prefs.jsonl --out {d}/ds --user-attributes {d}/users.csv")
    print(f"lore embed {d}/ds --backbone hashing-256")
    print(f"lore evaluate {d}/ds --ranks 1,2 --shots '' --group-by region,age --out {d}/report")


if __name__ == "__main__":
    main()

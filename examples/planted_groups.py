"""A planted population with groups: one region's preference differs from the majority's.

Every answer has a level of detail (0 to 3 explanatory clauses) and a tone (from formal to
casual, -2 to 2 markers), drawn at random, plus a few neutral filler words. Users of the
``north`` region (the majority) prefer detail, users of the ``south`` region prefer a casual
tone; each picks an answer with the Bradley–Terry probability of the difference in what they
value (``--sharpness`` per unit; equal values are a coin flip). One pooled reward follows the
majority and serves the south badly; a rank-2 basis with personal weights can serve both.
``age`` is drawn independently of the preference.

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
import math
import random
from pathlib import Path

TOPICS = ["apples", "trains", "poems", "rivers", "chess", "bread", "clouds", "violins"]
CLAUSES = [
    "they have a long history",
    "people use them in many ways",
    "each one tells a story worth telling",
    "experts study them step by step",
    "their details reward a careful look",
    "the reasons behind them are well documented",
]
CASUAL = ["hey", "mate", "lol", "cheers"]
FORMAL = ["respectfully", "sincerely", "regards", "accordingly"]
FILLER = ["indeed", "well", "also", "so", "really", "quite", "often", "here"]


def answer(topic: str, detail: int, tone: int, rng: random.Random) -> str:
    """An answer with ``detail`` clauses and ``tone`` casual (> 0) or formal (< 0) markers."""
    markers = rng.sample(CASUAL if tone > 0 else FORMAL, abs(tone))
    clauses = rng.sample(CLAUSES, detail)
    body = f"{topic} are nice" + (" because " + " and ".join(clauses) if clauses else "")
    words = [*markers[:1], *rng.sample(FILLER, rng.randint(0, 2)), body, *markers[1:]]
    return " ".join(words) + "."


def population(n_north: int, n_south: int, per_user: int, sharpness: float, seed: int):
    """(comparison rows, user rows)."""
    rng = random.Random(seed)
    rows, users = [], []
    for u in range(n_north + n_south):
        region = "north" if u < n_north else "south"
        uid = f"user{u:03d}"
        users.append({"user_id": uid, "region": region, "age": rng.choice(["18-34", "35+"])})
        for j in range(per_user):
            topic = rng.choice(TOPICS)
            while True:
                (da, ta), (db, tb) = [(rng.randint(0, 3), rng.randint(-2, 2)) for _ in "ab"]
                if (da, ta) != (db, tb):
                    break
            a, b = answer(topic, da, ta, rng), answer(topic, db, tb, rng)
            gap = (ta - tb) if region == "south" else (da - db)
            likes_a = rng.random() < 1.0 / (1.0 + math.exp(-sharpness * gap))
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
    ap.add_argument(
        "--sharpness", type=float, default=2.0, help="Bradley–Terry logit per unit of difference."
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows, users = population(args.north, args.south, args.per_user, args.sharpness, args.seed)
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

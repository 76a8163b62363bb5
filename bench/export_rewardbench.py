"""RewardBench 2's own scorer on a ``lore export``: does it give lore-rm's rewards?

Builds the tiny llama3-rope backbone and rank-3 model of ``bench/export_compat.py``, exports
user ``b``, writes a small file in RewardBench 2's layout (words of the tiny vocabulary; one
correct and three incorrect answers a prompt; Factuality, Math and Focus), and runs
rewardbench's ``scripts.run_v2`` on the export in a separate venv (rewardbench 0.1.4 pins
transformers 4.51.0). Prints the max |Δ| between its per-answer scores and lore-rm's rewards,
and both subset tables (rewardbench's, and ``lore rewardbench``'s for user ``b``).

rewardbench 0.1.4's pipeline moves its inputs with a hard-coded ``.to("cuda")``; without a
GPU they are sent to the CPU instead (nothing else of rewardbench is changed).

    python bench/export_rewardbench.py --setup     # first run: creates the venv (pip)
    python bench/export_rewardbench.py [--venv /tmp/lore-rewardbench]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from export_compat import tiny_setup  # noqa: E402
from tiny_models import WORDS  # noqa: E402

from lore_rm.evaluate.rewardbench import conversations, evaluate_rewardbench, read_rewardbench  # noqa: E402
from lore_rm.serve.export import export_reward_model  # noqa: E402

RUN_V2 = r"""
import runpy, sys, torch, transformers
if not torch.cuda.is_available():
    to = transformers.BatchEncoding.to
    transformers.BatchEncoding.to = lambda self, device, **kw: to(
        self, "cpu" if str(device).startswith("cuda") else device, **kw)
sys.argv = ["run_v2", *sys.argv[1:]]
runpy.run_module("scripts.run_v2", run_name="__main__")
"""


def write_rb2(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)

    def words(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    subsets = ("Factuality", "Math", "Focus")
    with open(path, "w") as f:
        for i in range(n):
            row = {
                "id": str(i),
                "prompt": words(8),
                "chosen": [words(rng.randint(5, 40))],
                "rejected": [words(rng.randint(5, 40)) for _ in range(3)],
                "subset": subsets[i % len(subsets)],
                "total_completions": 4,
                "num_correct": 1,
            }
            f.write(json.dumps(row) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", default="/tmp/lore-rewardbench", help="venv with rewardbench")
    ap.add_argument("--setup", action="store_true", help="create the venv with pip")
    ap.add_argument("--prompts", type=int, default=12)
    args = ap.parse_args()
    python = Path(args.venv) / "bin" / "python"
    if not python.exists():
        if not args.setup:
            sys.exit(f"{python} is missing: run with --setup")
        subprocess.run([sys.executable, "-m", "venv", args.venv], check=True)
        pip = [str(Path(args.venv) / "bin" / "pip"), "install", "-q", "torch==2.13.0"]
        subprocess.run([*pip, "rewardbench==0.1.4"], check=True)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        backbone, emb, model = tiny_setup(tmp / "backbone")
        export = export_reward_model(model, tmp / "export-b", backbone, user="b")
        data = tmp / "rb2.jsonl"
        write_rb2(data, args.prompts)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        env["WANDB_MODE"] = "disabled"
        cmd = [str(python), "-c", RUN_V2, f"--model={export}", f"--dataset={data}"]
        cmd += ["--do_not_save", "--torch_dtype", "float32"]
        run = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit("rewardbench failed:\n" + run.stderr[-3000:])
        version = subprocess.run(
            [str(python), "-c", "import transformers; print(transformers.__version__)"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        found = list((tmp / "results" / "eval-set-scores").rglob("*.json"))
        result = json.loads(found[0].read_text())
        order = np.argsort([int(i) for i in result["id"]])
        theirs = np.array([result["scores"][i] for i in order], dtype=np.float64).ravel()
        convs, chosen, rejected = conversations(read_rewardbench(data))
        per_answer = [i for c, r in zip(chosen, rejected, strict=True) for i in c + r]
        ours = model.reward(emb.embed(convs), "b").double().numpy()[per_answer]
        lore = evaluate_rewardbench(model, data, emb, users=["b"])["heads"]["user:b"]

    print(f"rewardbench 0.1.4 (transformers {version}) scripts.run_v2 on the export of user b")
    print(f"answers scored: {len(theirs)}; max |Δ| against lore-rm's rewards: ", end="")
    print(f"{np.abs(theirs - ours).max():.2g}\n")
    print("| subset | rewardbench run_v2 | lore rewardbench --user b |\n|---|---|---|")
    for line in run.stdout.splitlines():
        name, _, rest = line.partition(": ")
        if name in lore:
            print(f"| {name} | {rest} | {lore[name]:.3f} |")


if __name__ == "__main__":
    main()

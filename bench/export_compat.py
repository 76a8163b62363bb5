"""Does an export read the same in transformers 4.x and 5.x?

Builds tiny random Llama reward models whose rope settings matter (llama3 scaling with
rope_theta 500000, linear scaling) with the running transformers (5.x in the project's venv,
which writes the rope settings only under ``rope_parameters``), exports one user's reward with
``lore export``, and scores a few conversations with plain ``AutoTokenizer`` +
``AutoModelForSequenceClassification`` in each transformers: the running one and separate
venvs with older releases (the oldest the project supports, 4.44, and 4.51, which rewardbench
0.1.4 pins). Side by side, the former export (the backbone loaded and re-saved by transformers
5 with ``save_pretrained``) read the same way; where its tokenizer does not load, it is scored
with the lore export's tokenizer.

Columns: whether the tokenizer and model load; the rope frequencies the loader built against
the backbone's (max |Δ inv_freq|); weight keys the loaded model expects but the files lack, and
keys the files hold that it does not expect; max |Δ reward| against lore-rm's own rewards
(lore-rm's backbone embedder + the user's head).

    python bench/export_compat.py --setup          # first run: creates the venvs (pip)
    python bench/export_compat.py --versions 4.44,4.51 --venv-root /tmp
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tiny_models import build_tiny_reward_model, random_conversations  # noqa: E402

from lore_rm import LowRankReward  # noqa: E402
from lore_rm.embed.backbones import load_backbone  # noqa: E402
from lore_rm.serve.export import export_reward_model  # noqa: E402

ROPES = {
    "llama3": (
        500000.0,
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
    "linear": (10000.0, {"rope_type": "linear", "factor": 4.0}),
}

# Runs in the other venvs: plain transformers, no lore-rm.
READER = r"""
import glob, json, os, sys, torch, transformers
folder, convs, fallback_tok = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3]
out = {"transformers": transformers.__version__}
def err(e):
    return type(e).__name__ + ": " + (str(e).strip().splitlines() or [""])[0][:120]
try:
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    out["tokenizer"] = "ok"
except Exception as e:
    out["tokenizer"] = err(e)
    tok = transformers.AutoTokenizer.from_pretrained(fallback_tok)
major = int(transformers.__version__.split(".")[0])
kw = {"dtype" if major >= 5 else "torch_dtype": torch.float32}
try:
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder, **kw).eval()
except Exception as e:
    out["model"] = err(e)
    print(json.dumps(out)); sys.exit()
out["model"] = "ok"
out["inv_freq"] = model.model.rotary_emb.inv_freq.tolist()
from safetensors import safe_open
saved = set()
for f in glob.glob(os.path.join(folder, "*.safetensors")):
    if os.path.basename(f) != "lore_user_weights.safetensors":
        with safe_open(f, "pt") as s:
            saved |= set(s.keys())
expected = set(model.state_dict())
out["missing"], out["unexpected"] = sorted(expected - saved), sorted(saved - expected)
texts = [tok.apply_chat_template(c, tokenize=False) for c in convs]
batch = tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
try:
    with torch.no_grad():
        out["scores"] = model(**batch).logits[:, 0].double().tolist()
except Exception as e:
    out["model"] = "loads, scoring fails: " + err(e)
print(json.dumps(out))
"""


def tiny_setup(
    folder: Path, rope: str = "llama3", tokenizer: str = "word"
) -> tuple[Path, object, LowRankReward]:
    """A tiny backbone with ``rope`` settings and a ``tokenizer`` ("word" or byte-level
    "bpe"), lore-rm's fp32 embedder over it, and a rank-3 model over its embeddings with users
    ``a`` and ``b``."""
    theta, scaling = ROPES[rope]
    backbone = build_tiny_reward_model(
        folder, rope_theta=theta, rope_scaling=scaling, tokenizer=tokenizer
    )
    emb = load_backbone(str(backbone), dtype="fp32")
    gen = torch.Generator().manual_seed(0)
    w = torch.rand(2, 3, generator=gen)
    model = LowRankReward.from_arrays(
        torch.randn(emb.dim, 3, generator=gen),
        w / w.sum(1, keepdim=True),
        ["a", "b"],
        backbone=str(backbone),
    )
    return backbone, emb, model


def setup_venv(python: Path, version: str) -> None:
    venv = python.parents[1]
    print(f"creating {venv} (transformers=={version}.*)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "-q", "torch==2.13.0", "safetensors"]
    subprocess.run([*pip, f"transformers=={version}.*"], check=True)


def former_export(backbone: Path, out: Path, head: torch.Tensor) -> None:
    """What lore export wrote before: the backbone loaded and re-saved by transformers."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=1)
    with torch.no_grad():
        clf.score.weight.copy_(head)
    clf.save_pretrained(out)
    AutoTokenizer.from_pretrained(backbone).save_pretrained(out)


def read(python: Path, folder: Path, convs: Path, fallback_tok: Path) -> dict:
    run = subprocess.run(
        [str(python), "-c", READER, str(folder), str(convs), str(fallback_tok)],
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        return {"model": "crashed: " + (run.stderr.strip().splitlines() or ["?"])[-1][:120]}
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", default="4.44,4.51", help="older transformers, one venv each")
    ap.add_argument("--venv-root", default="/tmp", help="venvs are ROOT/lore-tf-VERSION")
    ap.add_argument("--setup", action="store_true", help="create the missing venvs with pip")
    ap.add_argument("--conversations", type=int, default=12)
    ap.add_argument(
        "--tokenizers", default="word,bpe", help="word-level and/or byte-level BPE tokenizers"
    )
    args = ap.parse_args()

    pythons = {"running": Path(sys.executable)}
    for v in args.versions.split(","):
        python = Path(args.venv_root) / f"lore-tf-{v}" / "bin" / "python"
        if not python.exists():
            if not args.setup:
                sys.exit(f"{python} is missing: run with --setup (or create it, see the docstring)")
            setup_venv(python, v)
        pythons[v] = python

    convs = random_conversations(args.conversations, seed=3)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "convs.json").write_text(json.dumps(convs))
        for kind in args.tokenizers.split(","):
            for rope in ROPES:
                tag = f"{kind}-{rope}"
                backbone, emb, model = tiny_setup(tmp / f"backbone-{tag}", rope, kind)
                want = model.reward(emb.embed(convs), "b").double()
                inv_freq = emb.model.model.rotary_emb.inv_freq.double()
                lore = export_reward_model(model, tmp / f"lore-{tag}", backbone, user="b")
                exports = {"lore export": lore, "re-saved by 5.x (former)": tmp / f"former-{tag}"}
                head = (model.scale_ * model.basis_ @ model.user_weights_[1])[None, :]
                former_export(backbone, exports["re-saved by 5.x (former)"], head)
                for python in pythons.values():
                    for name, folder in exports.items():
                        got = read(python, folder, tmp / "convs.json", exports["lore export"])
                        rows.append([kind, *row(rope, name, got, want, inv_freq)])
    header = ["tokenizer file", "rope", "transformers", "export", "tokenizer", "model"]
    header += ["Δ inv_freq"]
    header += ["missing / unexpected keys", "max |Δ reward|"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")


def row(rope: str, name: str, got: dict, want: torch.Tensor, inv_freq: torch.Tensor) -> list[str]:
    out = [rope, got.get("transformers", "?"), name, got.get("tokenizer", "-"), got["model"]]
    if "inv_freq" not in got:
        return out + ["-", "-", "-"]
    freq = torch.tensor(got["inv_freq"], dtype=torch.float64)
    keys = f"{len(got['missing'])} / {len(got['unexpected'])}"
    if got["missing"] or got["unexpected"]:
        keys += f" ({', '.join((got['missing'] + got['unexpected'])[:2])})"
    diff = "-"
    if "scores" in got:
        diff = f"{(torch.tensor(got['scores'], dtype=torch.float64) - want).abs().max():.2g}"
    return out + [f"{(freq - inv_freq).abs().max():.2g}", keys, diff]


if __name__ == "__main__":
    main()

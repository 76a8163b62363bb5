#!/usr/bin/env bash
# One short check of lore-rm on a CUDA GPU, against the same work on the CPU.
#
#   bash bench/gpu_check.sh            # from the repository root, in its virtual environment
#
# 1. the test-suite's device tests (names, CUDA errors) and every test that asks for CUDA;
# 2. one fit at PersonalLLM size (planted users, d = 4096, rank 4, ridge given) on CUDA and on
#    the CPU: times and agreement (unseen-user accuracy, basis cosine);
# 3. `lore embed` of a tiny Llama reward model (built here) on CUDA and on the CPU: times and
#    the largest difference between the two stores.
# Nothing here is part of CI. Exit status: 1 when CUDA is absent or a check disagrees.
set -euo pipefail
PY=${PYTHON:-python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

$PY - <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("no CUDA GPU visible: nothing to check")
print("GPU:", torch.cuda.get_device_name(0), "torch", torch.__version__)
EOF

echo "== 1. device tests"
$PY -m pytest -q -p no:cacheprovider tests/test_devices.py -k "cuda or device or good" 2>&1 | tail -3

echo "== 2. fit at PersonalLLM size (CUDA vs CPU)"
$PY - <<'EOF'
import time
import torch
from lore_rm import LowRankReward, four_numbers, simulate_population

split = simulate_population(
    d=4096, true_rank=4, n_seen=1000, n_unseen=200, train_per_user=40, seed=0
).split
out = {}
for device in ("cuda", "cpu"):
    t0 = time.perf_counter()
    model = LowRankReward(rank=4, weight_decay=0.1, device=device, seed=0).fit(split.seen_train)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    out[device] = (model, seconds, four_numbers(model, split)["unseen_test"])
    print(f"{device}: fit {seconds:.1f} s, unseen accuracy {out[device][2]:.4f}")
(gpu, t_gpu, a_gpu), (cpu, t_cpu, a_cpu) = out["cuda"], out["cpu"]
cos = torch.nn.functional.cosine_similarity(gpu.basis_.cpu(), cpu.basis_, dim=0)
print(f"CPU / GPU time {t_cpu / t_gpu:.1f}x; accuracy difference {abs(a_gpu - a_cpu):.4f}; "
      f"basis column cosines {[round(float(c), 4) for c in cos]}")
if abs(a_gpu - a_cpu) > 0.01:
    raise SystemExit("the CUDA fit's accuracy differs from the CPU's by more than 0.01")
EOF

echo "== 3. lore embed of a tiny Llama (CUDA vs CPU)"
$PY - "$WORK" <<'EOF'
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, "tests")
from tiny_models import build_tiny_reward_model  # noqa: E402

work = Path(sys.argv[1])
model = build_tiny_reward_model(work / "tiny-llama")
rng = random.Random(0)
rows = []
for u in range(20):
    for j in range(10):
        topic = rng.choice(["tea", "trains", "owls", "bread"])
        rows.append({"prompt": f"about {topic} {j}", "chosen": f"{topic} are good " * (1 + j % 3),
                     "rejected": f"{topic}?", "user_id": f"u{u}"})
(work / "prefs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
stores = {}
for device in ("cuda", "cpu"):
    ds = work / f"ds-{device}"
    subprocess.run(["lore", "prepare", "generic", str(work / "prefs.jsonl"), "--out", str(ds)],
                   check=True, capture_output=True)
    t0 = time.perf_counter()
    subprocess.run(["lore", "embed", str(ds), "--backbone", str(model), "--dtype", "fp32",
                    "--device", device, "--no-progress"], check=True, capture_output=True)
    print(f"{device}: lore embed {time.perf_counter() - t0:.1f} s")
    from lore_rm import load_split
    split, _ = load_split(str(ds))
    stores[device] = split.seen_train.table.numpy()
diff = float(np.abs(stores["cuda"] - stores["cpu"]).max())
print(f"largest |cuda - cpu| embedding difference: {diff:.2e}")
if diff > 1e-3:
    raise SystemExit("CUDA and CPU embeddings differ by more than 1e-3")
EOF
echo "gpu_check: done"

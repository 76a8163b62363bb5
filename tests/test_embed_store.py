"""The embedding store: round trip, resume after a real kill, mismatch errors, torchrun."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from tiny_models import random_conversations, write_dataset

from lore_rm.embed import EmbeddingStore, StoreMismatchError, embed_dataset, load_backbone
from lore_rm.embed.store import MANIFEST_FILE, shard_file
from lore_rm.errors import DataError
from lore_rm.wording import counted

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(TESTS), env.get("PYTHONPATH", "")])
    env["HF_HUB_OFFLINE"] = "1"
    return env


def _store_files(store: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(store.iterdir())}


def test_round_trip_and_reference_head(tiny_backbone, tmp_path):
    convs = random_conversations(23, seed=10)
    ds = write_dataset(tmp_path / "ds", convs)
    report = embed_dataset(ds, tiny_backbone, shard_size=5, progress=False)
    assert report.computed == [0, 1, 2, 3, 4] and report.skipped == [] and report.complete
    store = EmbeddingStore(ds)
    man = store.manifest
    assert man["count"] == 23 and man["n_shards"] == 5 and man["d"] == 32
    assert man["backbone"]["pooling"] == "last-token" and man["backbone"]["revision"]
    assert [s["stop"] for s in man["shards"]] == [5, 10, 15, 20, 23]
    torch.testing.assert_close(store.load(), tiny_backbone.embed(convs), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(store.load(rows=[3, 21]), store.load()[[3, 21]])
    torch.testing.assert_close(store.reference_head(), tiny_backbone.reference_head())
    assert EmbeddingStore(ds / "embeddings").d == 32  # the store folder itself works too
    again = embed_dataset(ds, tiny_backbone, shard_size=5, progress=False)
    assert again.computed == [] and again.skipped == [0, 1, 2, 3, 4]


def test_bfloat16_storage_and_hashing_backbone(tmp_path):
    ds = write_dataset(tmp_path / "ds", random_conversations(9, seed=11))
    emb = load_backbone("hashing-16")
    embed_dataset(ds, emb, shard_size=4, storage_dtype="bfloat16", progress=False)
    store = EmbeddingStore(ds)
    assert store.manifest["dtype"] == "bfloat16" and store.reference_head() is not None
    loaded = store.load()
    assert loaded.dtype == torch.float32
    torch.testing.assert_close(
        loaded, emb.embed(random_conversations(9, seed=11)), atol=1e-2, rtol=1e-2
    )


def test_mismatched_backbone_texts_or_shards_are_errors(tiny_backbone, tmp_path):
    ds = write_dataset(tmp_path / "ds", random_conversations(8, seed=12))
    embed_dataset(ds, tiny_backbone, shard_size=4, progress=False)
    before = _store_files(ds / "embeddings")
    with pytest.raises(StoreMismatchError, match="backbone.name.*\n.*\n(.*\n)*.*pooling"):
        embed_dataset(ds, load_backbone("hashing-32"), progress=False)
    with pytest.raises(StoreMismatchError, match="shard_size: store has 4, this run 3"):
        embed_dataset(ds, tiny_backbone, shard_size=3, progress=False)
    write_dataset(ds, random_conversations(8, seed=13))  # same count, other texts
    with pytest.raises(StoreMismatchError, match="texts"):
        embed_dataset(ds, tiny_backbone, progress=False)
    assert _store_files(ds / "embeddings") == before  # nothing was mixed in


def test_other_weights_under_the_same_name_are_a_mismatch(tmp_path):
    """A folder re-saved with other weights (same config and file sizes, so the same
    revision) is caught by the content fingerprint."""
    from tiny_models import build_tiny_reward_model

    folder = build_tiny_reward_model(tmp_path / "rm", seed=0)
    ds = write_dataset(tmp_path / "ds", random_conversations(6, seed=14))
    first = load_backbone(str(folder), dtype="fp32", device="cpu")
    embed_dataset(ds, first, shard_size=4, progress=False)
    assert EmbeddingStore(ds).backbone["fingerprint"] == first.identity()["fingerprint"]
    build_tiny_reward_model(folder, seed=1)
    second = load_backbone(str(folder), dtype="fp32", device="cpu")
    assert second.identity()["revision"] == first.identity()["revision"]
    with pytest.raises(StoreMismatchError, match="backbone.fingerprint.*other weights"):
        embed_dataset(ds, second, shard_size=4, progress=False)


def test_damaged_swapped_or_stale_stores_never_load(tmp_path):
    convs = random_conversations(12, seed=14)
    ds = write_dataset(tmp_path / "ds", convs)
    emb = load_backbone("hashing-16")
    embed_dataset(ds, emb, shard_size=4, progress=False)
    store, path = EmbeddingStore(ds), ds / "embeddings"
    good = store.load()
    assert all(len(e["sha256"]) == 64 for e in store.manifest["shards"])
    files = _store_files(path)

    def restore():
        for name, data in files.items():
            (path / name).write_bytes(data)

    shard = path / shard_file(1)  # a flipped byte in the data, well past the header
    data = bytearray(files[shard.name])
    data[-3] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{shard.name}: its contents do not match the checksum"):
        store.load()
    with pytest.raises(DataError, match="checksum"):  # and `lore embed` does not call it complete
        embed_dataset(ds, emb, progress=False)
    restore()

    (path / shard_file(0)).write_bytes(files[shard_file(2)])  # swapped shard files
    (path / shard_file(2)).write_bytes(files[shard_file(0)])
    with pytest.raises(DataError, match="checksum"):
        store.load()
    restore()

    man = json.loads(files[MANIFEST_FILE])  # swapped manifest entries (rows and checksums)
    a, b = man["shards"][0], man["shards"][2]
    a["file"], b["file"] = b["file"], a["file"]
    (path / MANIFEST_FILE).write_text(json.dumps(man))
    with pytest.raises(DataError, match="not that shard's rows"):
        store.load()
    restore()
    torch.testing.assert_close(store.load(), good)

    write_dataset(ds, convs[1:] + convs[:1])  # the same texts, rotated
    with pytest.raises(StoreMismatchError, match="made from other texts"):
        store.check_texts(ds)


def test_incomplete_store_refuses_to_load_and_resume_cleans_temporaries(tiny_backbone, tmp_path):
    ds = write_dataset(tmp_path / "ds", random_conversations(12, seed=14))
    embed_dataset(ds, tiny_backbone, shard_size=4, progress=False)
    store = ds / "embeddings"
    reference = _store_files(store)
    # Simulate a run killed while writing shard 1: the shard is gone, a temporary remains.
    (store / shard_file(1)).unlink()
    (store / f".{shard_file(1)}.tmp-99999").write_bytes(b"half a shard")
    man = json.loads((store / MANIFEST_FILE).read_text())
    man["complete"] = False
    man["shards"] = [s for s in man["shards"] if s["file"] != shard_file(1)]
    (store / MANIFEST_FILE).write_text(json.dumps(man))
    with pytest.raises(DataError, match="incomplete .2 of 3 shards"):
        EmbeddingStore(ds).load()
    report = embed_dataset(ds, tiny_backbone, progress=False)
    assert report.computed == [1] and report.skipped == [0, 2]
    assert _store_files(store) == reference
    # A manifest that claims completeness over a gap is caught, never read as garbage rows.
    man = json.loads((store / MANIFEST_FILE).read_text())
    man["shards"] = man["shards"][:1] + man["shards"][2:]
    (store / MANIFEST_FILE).write_text(json.dumps(man))
    with pytest.raises(DataError, match="do not cover rows 0..11"):
        EmbeddingStore(ds).load()


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_store(tiny_reward_model_dir, tmp_path):
    convs = random_conversations(40, seed=15)
    ds = write_dataset(tmp_path / "ds", convs)
    child = textwrap.dedent(f"""
        import time
        from lore_rm.embed import embed_dataset, load_backbone
        emb = load_backbone({str(tiny_reward_model_dir)!r}, dtype="fp32", device="cpu",
                            batch_size=4)
        slow = emb.embed
        def embed(conversations):
            time.sleep(0.25)
            return slow(conversations)
        emb.embed = embed
        embed_dataset({str(ds)!r}, emb, shard_size=4, progress=False)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", child], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    store = ds / "embeddings"
    deadline = time.monotonic() + 120
    try:
        while len(list(store.glob("shard-*.safetensors"))) < 3:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the child never wrote three shards"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    first = {
        f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in store.glob("shard-*.safetensors")
    }
    assert 3 <= len(first) < 10, "the kill came too late to test anything"
    assert not EmbeddingStore(ds).is_complete

    emb = load_backbone(str(tiny_reward_model_dir), dtype="fp32", device="cpu", batch_size=4)
    report = embed_dataset(ds, emb, progress=False)
    done_before = sorted(int(n[6:11]) for n in first)
    assert report.skipped == done_before
    assert sorted(report.computed) == sorted(set(range(10)) - set(done_before))
    for f in store.glob("shard-*.safetensors"):  # finished shards were never rewritten
        if f.name in first:
            assert (f.stat().st_ino, f.stat().st_mtime_ns) == first[f.name]
    assert not list(store.glob(".*tmp*"))

    fresh = write_dataset(tmp_path / "fresh", convs)
    embed_dataset(fresh, emb, shard_size=4, progress=False)
    assert _store_files(store) == _store_files(fresh / "embeddings")  # byte for byte


def test_truncation_is_one_warning_per_run_not_per_shard(tiny_reward_model_dir, tmp_path):
    ds = write_dataset(tmp_path / "ds", random_conversations(12, seed=19))
    emb = load_backbone(str(tiny_reward_model_dir), dtype="fp32", device="cpu", max_length=6)
    with pytest.warns(UserWarning) as caught:
        embed_dataset(ds, emb, shard_size=4, progress=False)
    messages = [str(w.message) for w in caught if "max_length" in str(w.message)]
    assert len(messages) == 1 and "of the 12 texts embedded were longer" in messages[0]


def test_progress_moves_per_batch(tiny_backbone):
    convs = random_conversations(10, seed=17)
    steps: list[int] = []
    tiny_backbone.embed(convs + convs[:3], progress=steps.append)  # 3 duplicates: no forward
    assert sum(steps) == 13 and len(steps) == -(-10 // tiny_backbone.batch_size)


@pytest.mark.slow
def test_ctrl_c_says_what_is_saved_and_resumes(tiny_reward_model_dir, tmp_path):
    ds = write_dataset(tmp_path / "ds", random_conversations(1200, seed=18))
    cmd = [sys.executable, "-m", "lore_rm.cli", "embed", str(ds), "--backbone"]
    cmd += [str(tiny_reward_model_dir), "--dtype", "fp32", "--device", "cpu", "--no-progress"]
    proc = subprocess.Popen(
        [*cmd, "--shard-size", "4"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # a shell runs a background job with SIGINT ignored, and the child would inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    store = ds / "embeddings"
    deadline = time.monotonic() + 120
    while len(list(store.glob("shard-*.safetensors"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the child never wrote three shards"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert "of 300 shards (" in err and "Rerun the same `lore embed` command to resume" in err
    done = len(list(store.glob("shard-*.safetensors")))
    assert f"interrupted: {done} of 300 shards ({4 * done} of 1200 texts) are saved" in err
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (
        f"computed {counted(300 - done, 'shard')} (" in res.stdout
        and f"{done} already done" in res.stdout
    )


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tiny_reward_model_dir, tiny_backbone, tmp_path):
    convs = random_conversations(18, seed=16)
    one = write_dataset(tmp_path / "one", convs)
    two = write_dataset(tmp_path / "two", convs)
    embed_dataset(one, tiny_backbone, shard_size=4, progress=False)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "lore_rm.cli",
        "embed",
        str(two),
        "--backbone",
        str(tiny_reward_model_dir),
        "--dtype",
        "fp32",
        "--device",
        "cpu",
        "--batch-size",
        "4",
        "--shard-size",
        "4",
        "--no-progress",
    ]
    env = _env()
    env["OMP_NUM_THREADS"] = "1"  # two ranks on a small CI machine
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[rank 0]" in out.stdout and "[rank 1]" in out.stdout
    assert "computed 3 shards" in out.stdout and "computed 2 shards" in out.stdout
    a, b = EmbeddingStore(one), EmbeddingStore(two)
    assert a.manifest == b.manifest and b.is_complete
    torch.testing.assert_close(a.load(), b.load(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a.reference_head(), b.reference_head())


def test_cli_embed_and_its_errors(tiny_reward_model_dir, tmp_path):
    from typer.testing import CliRunner

    from lore_rm.cli import app

    ds = write_dataset(tmp_path / "ds", random_conversations(6, seed=17))
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "embed",
            str(ds),
            "--backbone",
            str(tiny_reward_model_dir),
            "--dtype",
            "fp32",
            "--device",
            "cpu",
            "--shard-size",
            "4",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "computed 2 shards" in res.output and "complete" in res.output
    assert EmbeddingStore(ds).load().shape == (6, 32)
    res = runner.invoke(app, ["embed", str(ds), "--backbone", "hashing-32", "--no-progress"])
    assert res.exit_code == 2 and "made differently" in res.output
    res = runner.invoke(app, ["embed", str(tmp_path / "nothing"), "--backbone", "hashing-8"])
    assert res.exit_code == 2 and "texts.parquet" in res.output
    shutil.rmtree(ds / "embeddings")

"""Damaged or edited dataset and store files are one-line errors, never tracebacks or silent
wrong answers (issue #28, defect 10): a manifest without a field or with a wrong type, a
shard entry without the sha256 the others have, an edited backbone record, a truncated
texts.parquet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_models import random_conversations, write_dataset
from typer.testing import CliRunner

from lore_rm.cli.main import app as cli
from lore_rm.embed import EmbeddingStore, embed_dataset, load_backbone
from lore_rm.embed.store import MANIFEST_FILE
from lore_rm.errors import DataError


@pytest.fixture()
def store_dir(tmp_path) -> Path:
    ds = write_dataset(tmp_path / "ds", random_conversations(12, seed=3))
    embed_dataset(ds, load_backbone("hashing-16"), shard_size=4, progress=False)
    return ds


def edit_manifest(ds: Path, fn) -> None:
    path = ds / "embeddings" / MANIFEST_FILE
    man = json.loads(path.read_text())
    fn(man)
    path.write_text(json.dumps(man))


def one_line_error(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.pop("shards"), "shards is None, expected a list"),
        (lambda m: m.pop("d"), "no d"),
        (lambda m: m.update(d="16"), "d is '16', expected a positive integer"),
        (lambda m: m.update(count=-1), "count is -1, expected an integer >= 0"),
        (lambda m: m.update(shards={"a": 1}), "shards is {'a': 1}, expected a list"),
        (lambda m: m["shards"][1].update(stop="x"), r"shards\[1\] is not"),
        (lambda m: m["shards"][1].pop("sha256"), r"shards\[1\] .* records no sha256"),
        (lambda m: m["backbone"].update(name="Skywork/Other"), "backbone differs"),
    ],
    ids=["no-shards", "no-d", "d-str", "count", "shards-dict", "entry", "no-sha", "name"],
)
def test_a_damaged_manifest_is_a_one_line_error(store_dir, edit, message):
    EmbeddingStore(store_dir).load()  # intact
    edit_manifest(store_dir, edit)
    with pytest.raises(DataError, match=message):
        EmbeddingStore(store_dir).load()
    line = one_line_error("embed", store_dir, "--backbone", "hashing-16", "--no-progress")
    assert MANIFEST_FILE in line


def test_a_truncated_texts_parquet_is_a_one_line_error(tmp_path):
    rows = [
        {"prompt": f"q{i}", "chosen": f"yes {i}", "rejected": f"no {i}", "user_id": f"u{i % 4}"}
        for i in range(40)
    ]
    src = tmp_path / "prefs.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = tmp_path / "ds"
    prepared = CliRunner().invoke(cli, ["prepare", "generic", str(src), "--out", str(ds)])
    assert prepared.exit_code == 0, prepared.output
    texts = ds / "texts.parquet"
    texts.write_bytes(texts.read_bytes()[: texts.stat().st_size // 2])
    line = one_line_error("data", "info", ds)
    assert "texts.parquet: not a readable parquet file" in line


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_writers_leftovers_are_swept_by_the_next_write(tmp_path):
    """A run killed inside atomic_folder left .NAME.partial-* behind forever; one killed
    between moving the old folder aside and renaming the new one in left no NAME at all."""
    import os
    import signal
    import subprocess
    import sys

    from lore_rm.io import atomic_folder

    out = tmp_path / "model"
    code = (
        "import sys, time\n"
        "from lore_rm.io import atomic_folder\n"
        "with atomic_folder(sys.argv[1], overwrite=True) as tmp:\n"
        "    (tmp / 'half').write_text('x')\n"
        "    print('inside', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"inside"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    (left,) = tmp_path.glob(".model.partial-*")
    assert (left / "half").is_file()

    mine = tmp_path / f".model.partial-{os.getpid()}-0000beef"  # a live writer's: kept
    mine.mkdir()
    previous = tmp_path / f".model.old-{_dead_pid()}-0000cafe"  # killed mid-swap
    previous.mkdir()
    (previous / "config.json").write_text("{}")
    with pytest.raises(DataError, match="already exists"):
        with atomic_folder(out):  # the previous folder is back first: nothing is lost
            pass
    assert (out / "config.json").is_file()
    assert not left.exists() and not previous.exists() and mine.exists()
    with atomic_folder(out, overwrite=True) as tmp:
        (tmp / "new").write_text("y")
    assert sorted(p.name for p in out.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [mine.name, "model"]

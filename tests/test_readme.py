"""The README's claims run as written: its Python block executes, its commands and flags exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lore_rm.cli import app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


SIMULATED = "split = lore_rm.simulate_population(seed=0).split"
REAL = '# split, backbone = lore_rm.load_split("data/mine")'


@pytest.mark.slow
def test_python_blocks_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (code,) = blocks("python")
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "my-model" / "model.safetensors").is_file()


def real_data_variant(code: str) -> str:
    """The block with its data line swapped for the commented real-data line."""
    lines = code.splitlines()
    sim = [i for i, line in enumerate(lines) if line.startswith(SIMULATED)]
    real = [i for i, line in enumerate(lines) if line.startswith(REAL)]
    assert len(sim) == 1 and len(real) == 1, "the README block lost its two data lines"
    lines[real[0]] = lines[real[0]][2:]
    del lines[sim[0]]
    return "\n".join(lines) + "\n"


@pytest.mark.slow
def test_python_block_runs_on_a_real_dataset_folder(tmp_path, monkeypatch):
    """The commented line for real data, on a tiny folder made the README's way (prepare,
    then embed: here with the hashing backbone, which needs no download)."""
    from lore_rm.data import prepare_generic
    from lore_rm.embed import HashingEmbedder, embed_dataset

    rows = [
        {
            "prompt": f"question {p}",
            "chosen": f"a {'long detailed' if u % 2 else 'short'} answer to {p}",
            "rejected": f"a {'short' if u % 2 else 'long detailed'} answer to {p}",
            "user_id": f"person-{u}",
        }
        for u in range(20)
        for p in range(12)
    ]
    monkeypatch.chdir(tmp_path)
    prepare_generic(rows, "data/mine")
    embed_dataset("data/mine", HashingEmbedder(64), progress=False)
    (code,) = blocks("python")
    scope: dict = {}
    exec(compile(real_data_variant(code), "README.md", "exec"), scope)
    assert scope["user"].startswith("person-")
    assert set(scope["per_user"]) <= {f"person-{u}" for u in range(20)}
    assert (tmp_path / "my-model" / "model.safetensors").is_file()


def test_the_readme_says_how_long_the_test_suite_takes():
    assert re.search(r"run the test suite \(about [\d–]+ minutes on two CPU cores", README)


def workflow_commands() -> list[list[str]]:
    out = []
    for block in blocks("bash"):
        for line in block.splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("lore "):
                out.append(shlex.split(line)[1:])
    return out


@pytest.mark.parametrize("args", workflow_commands(), ids=lambda a: " ".join(a[:2]))
def test_every_command_and_flag_in_the_readme_exists(args):
    words = [a for a in args if not a.startswith("-")]
    sub = words[:2] if words[0] in ("prepare", "data", "model") else words[:1]
    res = CliRunner().invoke(app, [*sub, "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    for flag in (a for a in args if a.startswith("--")):
        assert flag in res.output, f"{' '.join(sub)} --help does not list {flag}"

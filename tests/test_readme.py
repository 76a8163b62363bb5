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


@pytest.mark.slow
def test_python_blocks_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (code,) = blocks("python")
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "my-model" / "model.safetensors").is_file()


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

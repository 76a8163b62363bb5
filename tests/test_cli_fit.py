"""prepare -> embed (hashing stand-in) -> lore evaluate / lore fit, through the CLI."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from lore_rm import LowRankReward
from lore_rm.cli import app

pytestmark = pytest.mark.slow  # integration: prepare, embed, fit and evaluate commands

TOPICS = ["apples", "trains", "poems", "rivers", "chess", "bread"]


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _two_kinds_of_users(path, n_users=24, per_user=24, seed=0):
    """Half the users prefer the short answer, half the long one: a rank-2 population."""
    rng = random.Random(seed)
    rows = []
    for u in range(n_users):
        likes_long = u % 2 == 0
        for j in range(per_user):
            topic = rng.choice(TOPICS)
            prompt = f"tell me about {topic} number {j % 12}"
            short = f"{topic} are nice"
            long = f"{topic} are nice because they have a long and detailed story to tell"
            chosen, rejected = (long, short) if likes_long else (short, long)
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": chosen,
                    "rejected": rejected,
                    "user_id": f"user{u:02d}",
                }
            )
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_evaluate_and_fit_on_a_dataset(tmp_path):
    src = tmp_path / "prefs.jsonl"
    _two_kinds_of_users(src)
    ds, report, model_dir = tmp_path / "ds", tmp_path / "report", tmp_path / "model"
    runner = CliRunner()

    def ok(*args):
        res = runner.invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, res.output
        return res.output

    ok("prepare", "generic", src, "--out", ds, "--unseen-fraction", "0.25")
    ok("embed", ds, "--backbone", "hashing-64", "--no-progress")
    out = ok(
        "evaluate",
        ds,
        "--out",
        report,
        "--ranks",
        "0..2",
        "--shots",
        "2,4",
        "--trials",
        "2",
        "--active",
        "2",
        "--no-progress",
    )
    assert "unseen users" in out and "questions asked" in out
    rep = json.loads((report / "report.json").read_text())
    # both rules say which rank they pick: the published one and lore fit's cross-validation
    assert f"Selected rank {rep['selected_rank']}:" in out
    cv = rep["cross_validated_rank"]
    assert cv["rank"] in (1, 2) and "lore fit's rule" in out and f"picks rank {cv['rank']}" in out
    by_rank = {r["rank"]: r for r in rep["ranks"]}
    assert sorted(by_rank) == [0, 1, 2]
    # one pooled reward cannot serve two opposite kinds of users; rank 2 can
    assert by_rank[1]["unseen_test"] < 0.7
    assert by_rank[2]["unseen_test"] > 0.9
    assert [r["shots"] for r in rep["shots"]] == [2, 4]
    assert rep["config"]["backbone"]["name"] == "hashing-64"
    for name in ("ranks.csv", "shots.csv", "ranks.png", "shots.png", "config.json", "active.png"):
        assert (report / name).stat().st_size > 0
    active = {(r["criterion"], r["questions"]): r for r in rep["active"]}
    assert sorted(active) == [(c, q) for c in ("information", "random") for q in range(3)]
    assert active[("information", 2)]["unseen_test"] > active[("information", 0)]["unseen_test"]
    assert (report / "active.csv").read_text().startswith("rank,criterion,questions")

    out = ok("fit", ds, "--out", model_dir, "--rank", "2", "--no-progress")
    assert "Rank 2 (given); chosen by" in " ".join(out.split())  # only the ridge was searched
    assert "Chosen by" not in out and "rank 2, weight_decay" not in out
    model = LowRankReward.from_pretrained(model_dir)
    assert model.backbone == "hashing-64" and model.rank == 2
    assert len(model.users_) == 24  # 18 seen users + 6 unseen users personalised
    training = json.loads((model_dir / "training.json").read_text())
    assert training["accuracy"]["unseen_test"] > 0.9

    # lore serve needs neither --backbone nor --dtype: both come from the fitted model
    from lore_rm.embed.backbones import backbone_identity
    from lore_rm.serve.app import build_app

    served = build_app(str(model_dir)).state.service
    assert served.embedder.name == "hashing-64"
    assert backbone_identity(served.embedder)["dtype"] == training["backbone"]["dtype"]


def test_a_given_rank_of_at_least_the_seen_users_warns(tmp_path):
    src = tmp_path / "prefs.jsonl"
    _two_kinds_of_users(src, n_users=8, per_user=12)
    ds = tmp_path / "ds"
    assert _cli("prepare", "generic", src, "--out", ds, "--unseen-fraction", "0.25").exit_code == 0
    assert _cli("embed", ds, "--backbone", "hashing-64", "--no-progress").exit_code == 0
    args = ("fit", ds, "--rank", "6", "--weight-decay", "0.1", "--no-progress")
    res = _cli(*args, "--out", tmp_path / "m")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "rank 6 is at least the number of seen users (6)" in text
    assert "Rank 6 and weight_decay 0.1 given: nothing was cross-validated" in text


def test_fit_without_embeddings_is_a_clear_error(tmp_path):
    src = tmp_path / "prefs.jsonl"
    _two_kinds_of_users(src, n_users=4, per_user=6)
    runner = CliRunner()
    res = runner.invoke(app, ["prepare", "generic", str(src), "--out", str(tmp_path / "ds")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["fit", str(tmp_path / "ds"), "--out", str(tmp_path / "m")])
    assert res.exit_code == 2
    assert "lore embed" in res.output
    assert not (tmp_path / "m").exists()


def test_a_backbone_without_a_reward_head_skips_rank_0(tmp_path):
    src = tmp_path / "prefs.jsonl"
    _two_kinds_of_users(src, n_users=12, per_user=12)
    ds = tmp_path / "ds"
    run = _cli

    assert run("prepare", "generic", src, "--out", ds, "--unseen-fraction", "0.25").exit_code == 0
    assert run("embed", ds, "--backbone", "hashing-64", "--no-progress").exit_code == 0
    (manifest,) = ds.rglob("manifest.json")
    meta = json.loads(manifest.read_text())
    meta.pop("reference_head")  # as an embedding model (e.g. minilm) writes it
    manifest.write_text(json.dumps(meta))

    res = run("evaluate", ds, "--out", tmp_path / "r", "--ranks", "0..1", "--shots", "")
    assert res.exit_code == 0, res.output
    assert "Rank 0 skipped" in res.output
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [r["rank"] for r in rep["ranks"]] == [1]

    res = run("fit", ds, "--out", tmp_path / "m", "--rank", "0")
    assert res.exit_code == 2 and "reward head" in res.output
    res = run("fit", ds, "--out", tmp_path / "m", "--rank", "1", "--alpha", "10")
    assert res.exit_code == 2 and "alpha = 10" in res.output
    assert not (tmp_path / "m").exists()


def test_outputs_are_never_replaced_silently_and_never_keep_stale_files(tmp_path):
    src = tmp_path / "prefs.jsonl"
    _two_kinds_of_users(src, n_users=12, per_user=12)
    ds, model_dir, report = tmp_path / "ds", tmp_path / "model", tmp_path / "report"
    run = _cli

    assert run("prepare", "generic", src, "--out", ds, "--unseen-fraction", "0.25").exit_code == 0
    assert run("embed", ds, "--backbone", "hashing-64", "--no-progress").exit_code == 0
    fit = ("fit", ds, "--out", model_dir, "--rank", "2", "--no-progress")
    assert run(*fit).exit_code == 0
    weights = (model_dir / "model.safetensors").read_bytes()
    (model_dir / "lore-serve.sqlite").write_bytes(b"onboarded users")

    res = run(*fit)  # an existing model is refused before any work, and left as it was
    assert res.exit_code == 2
    assert "--overwrite" in res.output and "serving database" in res.output
    assert (model_dir / "model.safetensors").read_bytes() == weights

    (model_dir / "stale.txt").write_text("from an earlier run")
    res = run(*fit, "--overwrite", "--seed", "1")
    assert res.exit_code == 0, res.output
    assert not (model_dir / "stale.txt").exists()  # the folder was replaced as a whole
    assert not (model_dir / "lore-serve.sqlite").exists()
    (moved,) = tmp_path.glob("model.*.lore-serve.sqlite")
    assert moved.read_bytes() == b"onboarded users" and "moved to" in res.output
    assert LowRankReward.from_pretrained(model_dir).rank_ == 2

    evaluate = ("evaluate", ds, "--out", report, "--ranks", "2", "--trials", "1", "--no-progress")
    assert run(*evaluate, "--shots", "2").exit_code == 0
    assert (report / "shots.png").exists()
    assert run(*evaluate, "--shots", "").exit_code == 0  # a rerun replaces the whole report
    assert not (report / "shots.png").exists() and not (report / "shots.csv").exists()

    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    res = run("evaluate", ds, "--out", other, "--ranks", "1", "--shots", "", "--no-progress")
    assert res.exit_code == 2 and "not a lore report folder" in res.output
    assert (other / "mine.txt").read_text() == "keep me"


def test_fit_refuses_embeddings_of_other_texts(tmp_path):
    import pyarrow.parquet as pq

    src = tmp_path / "prefs.jsonl"
    _two_kinds_of_users(src, n_users=6, per_user=6)
    ds = tmp_path / "ds"
    runner = CliRunner()
    assert runner.invoke(app, ["prepare", "generic", str(src), "--out", str(ds)]).exit_code == 0
    res = runner.invoke(app, ["embed", str(ds), "--backbone", "hashing-16", "--no-progress"])
    assert res.exit_code == 0, res.output
    texts = pq.read_table(ds / "texts.parquet")
    rotated = texts.set_column(
        texts.column_names.index("messages"),
        "messages",
        texts.column("messages").take(list(range(1, texts.num_rows)) + [0]),
    )
    pq.write_table(rotated, ds / "texts.parquet")
    res = runner.invoke(app, ["fit", str(ds), "--out", str(tmp_path / "m"), "--rank", "1"])
    assert res.exit_code == 2 and "made from other texts" in res.output


def test_prepare_overwrite_keeps_embeddings_of_the_same_texts(tmp_path):
    src = tmp_path / "prefs.jsonl"
    _two_kinds_of_users(src, n_users=8, per_user=8)
    ds = tmp_path / "ds"
    run = _cli

    assert run("prepare", "generic", src, "--out", ds).exit_code == 0
    assert run("embed", ds, "--backbone", "hashing-16", "--no-progress").exit_code == 0
    store = {f.name: f.read_bytes() for f in (ds / "embeddings").iterdir()}

    res = run("prepare", "generic", src, "--out", ds, "--seed", "1")
    assert res.exit_code == 2 and "--overwrite" in res.output
    res = run("prepare", "generic", src, "--out", ds, "--seed", "1", "--overwrite")
    assert res.exit_code == 0, res.output
    assert "no re-embedding" in res.output
    assert {f.name: f.read_bytes() for f in (ds / "embeddings").iterdir()} == store
    assert json.loads((ds / "dataset.json").read_text())["seed"] == 1
    res = run("fit", ds, "--out", tmp_path / "m", "--rank", "2", "--no-progress")
    assert res.exit_code == 0, res.output

    _two_kinds_of_users(src, n_users=8, per_user=8, seed=5)  # other texts
    res = run("prepare", "generic", src, "--out", ds, "--overwrite")
    assert res.exit_code == 2 and "--discard-embeddings" in res.output
    assert {f.name: f.read_bytes() for f in (ds / "embeddings").iterdir()} == store
    res = run("prepare", "generic", src, "--out", ds, "--overwrite", "--discard-embeddings")
    assert res.exit_code == 0, res.output
    assert not (ds / "embeddings").exists()


def test_degenerate_datasets_say_which_role_is_empty(tmp_path):
    src = tmp_path / "prefs.jsonl"
    _two_kinds_of_users(src, n_users=6, per_user=8)
    rows = [json.loads(line) for line in src.read_text().splitlines()]

    def dataset(name, role_of):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("\n".join(json.dumps({**r, "role": role_of(r)}) for r in rows) + "\n")
        ds = tmp_path / name
        res = _cli("prepare", "generic", path, "--out", ds, "--split-column", "role")
        assert res.exit_code == 0, res.output
        assert _cli("embed", ds, "--backbone", "hashing-16", "--no-progress").exit_code == 0
        return ds

    seen_only = dataset("seen", lambda r: "seen-train" if r["chosen"] < "u" else "seen-test")
    res = _cli("fit", seen_only, "--out", tmp_path / "m", "--rank", "2", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "nan" not in res.output
    assert "(the dataset has no unseen-test comparisons)" in " ".join(res.output.split())

    no_train = dataset("none", lambda r: "unseen-test")
    for command in ("fit", "evaluate"):
        res = _cli(command, no_train, "--out", tmp_path / command, "--no-progress")
        assert res.exit_code == 2
        assert "the role 'seen-train' has no comparisons" in res.output
        assert str(no_train) in " ".join(res.output.split())


def test_truncated_model_shard_and_parquet_files_are_one_line_errors(tmp_path):
    src = tmp_path / "prefs.jsonl"
    _two_kinds_of_users(src, n_users=6, per_user=8)
    ds, model_dir = tmp_path / "ds", tmp_path / "m"
    assert _cli("prepare", "generic", src, "--out", ds).exit_code == 0
    assert _cli("embed", ds, "--backbone", "hashing-16", "--no-progress").exit_code == 0
    assert _cli("fit", ds, "--out", model_dir, "--rank", "1", "--no-progress").exit_code == 0

    def truncate(path):
        path.write_bytes(path.read_bytes()[:150])

    def one_line_error(*args, names):
        res = _cli(*args)
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output and "error:" in res.output
        assert names in " ".join(res.output.split())

    truncate(model_dir / "model.safetensors")
    one_line_error(
        "rewardbench", model_dir, "--data", src, names="model.safetensors: not a readable"
    )
    manifest = ds / "embeddings" / "manifest.json"  # a store written before checksums
    meta = json.loads(manifest.read_text())
    for entry in meta["shards"]:
        entry.pop("sha256")
    manifest.write_text(json.dumps(meta))
    truncate(ds / "embeddings" / "shard-00000.safetensors")
    one_line_error("fit", ds, "--out", tmp_path / "m2", names="shard-00000.safetensors: not a")
    truncate(ds / "texts.parquet")
    for command in ("fit", "embed"):
        args = ("--out", tmp_path / "m3") if command == "fit" else ("--backbone", "hashing-16")
        one_line_error(command, ds, *args, names="texts.parquet: not a readable parquet file")

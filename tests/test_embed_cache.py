"""Embeddings computed once: the content-addressed cache on disk (``--cache DIR``) shared by
datasets and commands, and the bounded in-memory cache of ``lore serve``. Every test counts
the texts the backbone itself embeds."""

from __future__ import annotations

import logging

import httpx
import pytest
import torch
from serve_utils import LiveServer, shared_model_dir
from typer.testing import CliRunner

from lore_rm.cli import app
from lore_rm.data import prepare_generic
from lore_rm.data.layout import read_conversations
from lore_rm.embed import EmbeddingStore, HashingEmbedder, embed_dataset
from lore_rm.embed import memory_cache as memory_cache_module
from lore_rm.embed.cache import CachedEmbedder, conversation_key
from lore_rm.embed.memory_cache import MemoryCachedEmbedder
from lore_rm.errors import DataError


class CountingEmbedder(HashingEmbedder):
    """The hashing stand-in, counting the conversations it embeds (and its calls)."""

    def __init__(self, dim: int = 32, seed: int = 0, die_at_call: int = 0) -> None:
        super().__init__(dim, seed)
        self.n_embedded = 0
        self.calls = 0
        self.die_at_call = die_at_call  # a Ctrl-C on this call (1, 2, ...; 0: never)

    def embed(self, conversations):
        self.calls += 1
        if self.calls == self.die_at_call:
            raise KeyboardInterrupt
        self.n_embedded += len(conversations)
        return super().embed(conversations)


def rows(users: range, prompts: range) -> list[dict]:
    return [
        {
            "prompt": f"what about topic {p}?",
            "chosen": f"a careful answer on {p}" if u % 2 else f"short {p}",
            "rejected": f"short {p}" if u % 2 else f"a careful answer on {p}",
            "user_id": f"user{u}",
        }
        for u in users
        for p in prompts
    ]


def test_a_second_dataset_over_the_same_texts_embeds_nothing_new(tmp_path):
    first = prepare_generic(rows(range(12), range(40)), tmp_path / "first")
    # other users, another split, a subset of the same prompts and answers
    second = prepare_generic(rows(range(50, 58), range(5, 30)), tmp_path / "second")
    backbone = CountingEmbedder()
    embed_dataset(first, CachedEmbedder(backbone, tmp_path / "cache"), shard_size=16)
    n_first = len(read_conversations(first))
    assert backbone.n_embedded == n_first == 80

    cached = CachedEmbedder(backbone, tmp_path / "cache")  # as a new process would open it
    report = embed_dataset(second, cached, shard_size=16, progress=False)
    assert report.complete and report.rows == len(read_conversations(second)) == 50
    assert backbone.n_embedded == n_first  # nothing new
    assert (cached.hits, cached.misses) == (50, 0)
    # the same store as without the cache, bit for bit, with the same backbone record
    plain = prepare_generic(rows(range(50, 58), range(5, 30)), tmp_path / "plain")
    embed_dataset(plain, CountingEmbedder(), shard_size=16, progress=False)
    assert torch.equal(EmbeddingStore(second).load(), EmbeddingStore(plain).load())
    assert EmbeddingStore(second).backbone == EmbeddingStore(plain).backbone


def test_the_backbone_and_its_settings_are_part_of_the_key(tmp_path):
    convs = read_conversations(prepare_generic(rows(range(2), range(6)), tmp_path / "ds"))
    a = CountingEmbedder(32, seed=0)
    CachedEmbedder(a, tmp_path / "cache").embed(convs)
    other = CountingEmbedder(32, seed=1)  # other weights, same name: not the same backbone
    other.identity = lambda: {**_identity(other), "fingerprint": "sha256:other"}
    got = CachedEmbedder(other, tmp_path / "cache").embed(convs)
    assert other.n_embedded == len(convs)
    assert torch.equal(got, HashingEmbedder(32, seed=1).embed(convs))
    again = CountingEmbedder(32, seed=0)
    CachedEmbedder(again, tmp_path / "cache").embed(convs[::-1] + convs[:2])
    assert again.n_embedded == 0  # any order, repeats: all from the cache
    assert len(list((tmp_path / "cache").iterdir())) == 2  # one folder per backbone


def _identity(embedder) -> dict:
    from lore_rm.embed.backbones import backbone_identity

    return backbone_identity(HashingEmbedder(embedder.dim, embedder.seed))


def test_a_killed_run_keeps_every_whole_segment(tmp_path, monkeypatch):
    from lore_rm.embed import cache as cache_module

    monkeypatch.setattr(cache_module, "SEGMENT_TEXTS", 10)
    convs = read_conversations(prepare_generic(rows(range(2), range(20)), tmp_path / "ds"))
    with pytest.raises(KeyboardInterrupt):  # killed while embedding the third segment
        CachedEmbedder(CountingEmbedder(die_at_call=3), tmp_path / "cache").embed(convs)
    (backbone_dir,) = (tmp_path / "cache").iterdir()
    segments = [p.name for p in backbone_dir.iterdir() if p.is_dir()]
    assert len(segments) == 2 and not [s for s in segments if s.startswith(".")]
    rerun = CountingEmbedder()
    out = CachedEmbedder(rerun, tmp_path / "cache").embed(convs)
    assert rerun.n_embedded == len(convs) - 20  # only what the killed run had not finished
    assert torch.equal(out, HashingEmbedder(32).embed(convs))
    # a damaged segment is an error naming it, never wrong embeddings
    shard = next(backbone_dir.glob("*/embeddings/shard-00000.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="do not match the checksum"):
        CachedEmbedder(CountingEmbedder(), tmp_path / "cache").embed(convs)


def test_lore_embed_and_score_take_the_cache(tmp_path):
    runner = CliRunner()
    first = prepare_generic(rows(range(10), range(30)), tmp_path / "first")
    second = prepare_generic(rows(range(40, 46), range(30)), tmp_path / "second")
    args = ["--backbone", "hashing-64", "--cache", str(tmp_path / "cache"), "--no-progress"]
    res = runner.invoke(app, ["embed", str(first), *args])
    assert res.exit_code == 0, res.output
    assert "of these texts 0 read from the cache, 60 embedded" in res.output
    res = runner.invoke(app, ["embed", str(second), *args])
    assert res.exit_code == 0, res.output
    assert "of these texts 60 read from the cache, 0 embedded" in res.output


def test_the_memory_cache_is_bounded_and_counts_its_hits():
    backbone = CountingEmbedder(16)
    convs = [
        [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]
        for i in range(6)
    ]
    cache = MemoryCachedEmbedder(backbone, max_bytes=4 * 16 * 4)  # four rows
    assert torch.equal(
        cache.embed(convs[:4] + convs[:2]), HashingEmbedder(16).embed(convs[:4] + convs[:2])
    )
    assert backbone.n_embedded == 4  # the repeats within one call too
    cache.embed(convs[:4])
    assert backbone.n_embedded == 4
    cache.embed(convs[4:])  # two new rows push out the two least recently used
    assert cache.stats()["entries"] == 4 and backbone.n_embedded == 6
    cache.embed(convs[:2])
    assert backbone.n_embedded == 8
    s = cache.stats()
    # misses: the texts the backbone ran on; every other text looked up is a hit
    assert (s["hits"], s["misses"]) == (2 + 4, 8) and s["hit_rate"] == pytest.approx(6 / 14)
    assert conversation_key(convs[0]) == conversation_key(
        [dict(reversed(list(m.items()))) for m in convs[0]]
    )


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.slow
def test_the_service_embeds_repeated_candidates_once_and_logs_its_hit_rate(tmp_path, monkeypatch):
    from lore_rm.serve.app import build_app

    monkeypatch.setattr(memory_cache_module, "LOG_EVERY", 120)
    lines = Lines()
    backbone = CountingEmbedder(64)
    try:
        app_ = build_app(
            str(shared_model_dir()),
            db=str(tmp_path / "db.sqlite"),
            loader=lambda name, **kw: backbone,
        )
        pool = [
            {"prompt": f"topic {i}", "response_a": f"winter river {i}", "response_b": f"sunny {i}"}
            for i in range(60)
        ]
        with LiveServer(app_) as url, httpx.Client(base_url=url, timeout=60) as client:
            # after uvicorn set its logging up (the test server logs warnings only)
            memory_cache_module.log.addHandler(lines)
            memory_cache_module.log.setLevel(logging.INFO)
            warmed = backbone.n_embedded
            for _ in range(3):
                out = client.post("/users/newbie/next-questions", json={"candidates": pool, "n": 3})
                assert out.status_code == 200, out.text
            assert backbone.n_embedded - warmed == 120  # the first call only
            body = {
                "conversations": [
                    [
                        {"role": "user", "content": "topic 1"},
                        {"role": "assistant", "content": "winter river 1"},
                    ]
                ],
                "users": ["newbie"],
            }
            assert client.post("/reward", json=body).status_code == 200
            assert backbone.n_embedded - warmed == 120  # a candidate already seen
    finally:
        memory_cache_module.log.removeHandler(lines)
        memory_cache_module.log.setLevel(logging.NOTSET)
    want = "embedding cache: 66.5% of 361 texts served from memory (121 embedded)"
    assert any(ln.startswith(want) for ln in lines.lines), lines.lines

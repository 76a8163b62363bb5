"""Hardening of the service (issue #28), each against a live uvicorn on loopback: texts over a
character limit, bodies with many unknown keys, a user whose stored rows disappear, the
Host allow-list and the header-read timeout, token redaction, bounded per-user history, path
user ids that are not UTF-8 and the locations errors name."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time

import httpx
import pytest
from serve_utils import (
    D,
    LiveServer,
    conversation,
    shared_model_dir,
    start_lore_serve,
    stop_lore_serve,
    wait_until,
)

from lore_rm import LowRankReward
from lore_rm.embed.hashing import HashingEmbedder
from lore_rm.serve import Limits, create_app
from lore_rm.serve.service import RewardService
from lore_rm.serve.user_store import Store


@pytest.fixture(scope="module")
def model() -> LowRankReward:
    return LowRankReward.from_pretrained(shared_model_dir())


def serve(model, tmp_path, **kw):
    """A live server over ``model`` and the hashing backbone (``kw``: create_app's)."""
    return LiveServer(create_app(model, HashingEmbedder(D), tmp_path / "db.sqlite", **kw))


# ---- defect 1: texts over a character limit ---------------------------------------------------
def test_a_text_over_the_character_limit_is_a_422_naming_it(model, tmp_path):
    limit = 1000
    ok, long = "a" * limit, "b" * (limit + 1)
    bodies = {
        "/reward": lambda t: {"user": "seen1", "conversations": [conversation("hi", t)]},
        "/get_reward": lambda t: {"query": [t], "prompts": [t[:3]]},
        "/users/ann/comparisons": lambda t: {
            "comparisons": [{"prompt": "q", "chosen": t, "rejected": "no"}]
        },
        "/users/ann/next-questions": lambda t: {
            "candidates": [{"prompt": "q", "response_a": "yes", "response_b": t}],
            "n": 1,
        },
    }
    where = {
        "/reward": ["body", "conversations", 0, 1, "content"],
        "/get_reward": ["body", "query", 0],
        "/users/ann/comparisons": ["body", "comparisons", 0, "chosen", 0, "content"],
        "/users/ann/next-questions": ["body", "candidates", 0, "response_b", 0, "content"],
    }
    with serve(model, tmp_path, limits=Limits(max_text_chars=limit)) as url:
        for path, make in bodies.items():
            assert httpx.post(url + path, json=make(ok), timeout=30).status_code == 200, path
            r = httpx.post(url + path, json=make(long), timeout=30)
            assert r.status_code == 422, (path, r.text)
            (err,) = r.json()["detail"]
            assert err["loc"] == where[path]
            assert f"{limit + 1} characters" in err["msg"] and f"at most {limit}" in err["msg"]
        info = httpx.get(url + "/model-info").json()
    assert info["limits"]["max_text_chars"] == limit


# ---- defect 3: many unknown keys --------------------------------------------------------------
def _health_worst(url: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(base_url=url, timeout=60) as c:
        while not stop.is_set():
            t0 = time.monotonic()
            c.get("/health")
            out.append(time.monotonic() - t0)
            time.sleep(0.005)


@pytest.mark.parametrize(
    ("path", "where"),
    [
        ("/reward", "top"),
        ("/users/ann/comparisons", "nested"),
        ("/users/ann/next-questions", "nested"),
        ("/get_reward", "top"),
    ],
)
def test_many_unknown_keys_are_refused_in_one_pass(model, tmp_path, path, where):
    """100k unknown keys (1.3 MB): one 422 naming a few and counting them (it was one error per
    key, and seconds of a frozen event loop for a million); /health keeps answering."""
    n = 100_000
    junk = {f"k{i}": i for i in range(n)}
    base = {
        "/reward": {"user": "seen1", "conversations": [conversation("hi", "yo")]},
        "/get_reward": {"query": ["hi yo"]},
        "/users/ann/comparisons": {
            "comparisons": [{"prompt": "q", "chosen": "yes", "rejected": "no"}]
        },
        "/users/ann/next-questions": {
            "candidates": [{"prompt": "q", "response_a": "yes", "response_b": "no"}],
            "n": 1,
        },
    }[path]
    if where == "top":
        body = {**base, **junk}
    else:
        key = next(iter(base))
        body = {**base, key: [{**base[key][0], **junk}]}
    raw = json.dumps(body).encode()
    with serve(model, tmp_path) as url:
        stop, health = threading.Event(), []
        poller = threading.Thread(target=_health_worst, args=(url, stop, health))
        poller.start()
        time.sleep(0.1)
        t0 = time.monotonic()
        r = httpx.post(url + path, content=raw, headers={"content-type": "application/json"})
        took = time.monotonic() - t0
        time.sleep(0.1)
        stop.set()
        poller.join(30)
    if path == "/get_reward":  # OpenRLHF's request: extra keys are ignored
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 422, r.text
        assert "n_errors" not in r.json()
        (err,) = r.json()["detail"]
        assert f"{n} unknown key(s): 'k0', 'k1'" in err["msg"], err
        assert f"and {n - 5} more" in err["msg"]
    assert took < 3.0 and max(health) < 1.5, (took, max(health))


def test_a_body_of_a_million_keys_is_refused_before_it_is_parsed(model, tmp_path):
    """1M keys (12 MB, under the 16 MiB body limit): a 413 from counting ':' and ','
    (json.loads alone took over a second of the event loop)."""
    n = 1_000_000
    raw = (
        b'{"user": "seen1", "conversations": [], '
        + b",".join(b'"%x":0' % i for i in range(n))
        + b"}"
    )
    assert len(raw) < Limits().max_body_bytes
    prose = [conversation("q", f"{i} a, b: c " * 100_000) for i in range(3)]  # 600k ':' and ','
    text_with_commas = {"user": "seen1", "conversations": prose}
    with serve(model, tmp_path) as url:
        stop, health = threading.Event(), []
        poller = threading.Thread(target=_health_worst, args=(url, stop, health))
        poller.start()
        time.sleep(0.1)
        r = httpx.post(url + "/reward", content=raw, headers={"content-type": "application/json"})
        ok = httpx.post(url + "/reward", json=text_with_commas, timeout=30)
        stop.set()
        poller.join(30)
    assert r.status_code == 413, r.text
    msg = r.json()["detail"][0]["msg"]
    assert f"holds {2 * n + 3} JSON keys and list items" in msg and "at most 400000" in msg
    assert ok.status_code == 200, ok.text  # ':' and ',' inside strings are not counted
    assert max(health) < 1.0, max(health)


# ---- defect 5: a user whose stored rows disappear ---------------------------------------------
def _onboard(client: httpx.Client, user: str, n: int, tag: str = "") -> dict:
    items = [
        {"prompt": f"topic {tag}{i}", "chosen": f"winter river {tag}{i}", "rejected": f"sunny {i}"}
        for i in range(n)
    ]
    r = client.post(f"/users/{user}/comparisons", json={"comparisons": items})
    assert r.status_code == 200, r.text
    return r.json()


def _delete_rows(db, user: str, keep: int = 0) -> None:
    """What an operator does by hand: drop a user's stored comparisons (all but ``keep``)."""
    con = sqlite3.connect(db)
    with con:
        con.execute(
            "DELETE FROM comparisons WHERE user_id = ? AND id NOT IN "
            "(SELECT id FROM comparisons WHERE user_id = ? ORDER BY id LIMIT ?)",
            (user, user, keep),
        )
    con.close()


def test_a_user_whose_rows_were_deleted_is_refit_on_read(model, tmp_path):
    """n_fit above the stored rows used to spin a thread forever on every GET /users/{id} or
    next-questions (~40 such requests hung the server)."""
    db = tmp_path / "db.sqlite"
    pair = {"candidates": [{"prompt": "q", "response_a": "winter", "response_b": "sunny"}], "n": 1}
    with serve(model, tmp_path) as url, httpx.Client(base_url=url, timeout=5) as client:
        _onboard(client, "ann", 4)
        _onboard(client, "bob", 4)
        seen = _onboard(client, "seen1", 3)  # a user of the model folder, onboarded too
        folder = model.weights_for(["seen1"])[0][0].tolist()
        assert seen["weights"] != pytest.approx(folder)
        _delete_rows(db, "ann")
        _delete_rows(db, "bob", keep=2)
        _delete_rows(db, "seen1")

        ann = client.get("/users/ann").json()
        assert ann["source"] == "population-mean" and not ann["known"]
        assert ann["n_comparisons"] == 0 and ann["n_fit"] is None
        assert client.post("/users/ann/next-questions", json=pair).json()["n_answers"] == 0
        assert client.post("/reward", json={"user": "ann", "conversations": [
            conversation("q", "a")]}).json()["known"] == [False]  # fmt: skip

        bob = client.post("/users/bob/next-questions", json=pair).json()
        assert bob["n_answers"] == 2 and bob["known"]
        bob = client.get("/users/bob").json()
        assert bob["n_comparisons"] == 2 and bob["n_fit"] == 2
        assert bob["posterior"]["n_answers"] == 2

        seen = client.get("/users/seen1").json()
        assert seen["source"] == "model" and seen["weights"] == pytest.approx(folder)
        assert seen["posterior"] is None

        again = _onboard(client, "ann", 1, tag="again")  # onboarding starts afresh
        assert again["total"] == 1 and again["n_fit"] == 1 and again["new_user"]
        assert client.get("/users/ann").json()["n_fit"] == 1
    assert Store(db).stale_users() == []


def test_rows_deleted_while_the_service_was_down_are_repaired_at_start(model, tmp_path):
    db = tmp_path / "db.sqlite"
    with serve(model, tmp_path) as url, httpx.Client(base_url=url, timeout=5) as client:
        _onboard(client, "ann", 4)
        _onboard(client, "bob", 5)
    _delete_rows(db, "ann")
    _delete_rows(db, "bob", keep=3)
    assert Store(db).stale_users() == ["ann", "bob"]
    svc = RewardService(model, HashingEmbedder(D), db, warm_up=False)
    try:
        assert Store(db).stale_users() == []
        assert Store(db).user_record("ann") is None
        assert Store(db).user_record("bob")[1] == 3  # type: ignore[index]
        assert svc.user_info("bob")["n_fit"] == 3 and not svc.user_info("ann")["known"]
    finally:
        svc.close()


# ---- defect 7: exposure defaults --------------------------------------------------------------
def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (reading what it sends)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


@pytest.mark.slow
def test_lore_serve_answers_loopback_names_only_and_closes_slow_connections(tmp_path):
    """The default loopback bind served any Host (a DNS-rebinding page could read and write
    it), and connections that never sent a request stayed open."""
    proc, url = start_lore_serve(shared_model_dir(), tmp_path / "db.sqlite", "--header-timeout",
                                 "0.5", "--allowed-host", "rm.internal")  # fmt: skip
    port = int(url.rsplit(":", 1)[1])
    try:
        for host, status in [("attacker.example", 400), (f"attacker.example:{port}", 400),
                             (f"localhost:{port}", 200), (f"[::1]:{port}", 200),
                             ("127.0.0.1", 200), ("rm.internal", 200)]:  # fmt: skip
            r = httpx.get(url + "/model-info", headers={"Host": host})
            assert r.status_code == status, (host, r.text)
        assert "'a.b' is not a name" in httpx.get(url + "/health", headers={"Host": "a.b"}).text

        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        trickle = socket.create_connection(("127.0.0.1", port))
        trickle.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        kept = socket.create_connection(("127.0.0.1", port))
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert b"200 OK" in kept.recv(4096)
        kept.sendall(b"GET /health HTTP/1.1\r\n")  # a next request, left hanging
        t0 = time.monotonic()
        assert all(_closed_within(s, 3.0) for s in [*idle, trickle, kept])
        assert time.monotonic() - t0 < 2.5
        assert httpx.get(url + "/health").status_code == 200  # and it still serves
    finally:
        stop_lore_serve(proc)


def test_binding_beyond_loopback_needs_a_token(tmp_path, monkeypatch):
    import uvicorn
    from typer.testing import CliRunner

    from lore_rm.cli.main import app as cli

    started: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: started.append(kw))
    monkeypatch.delenv("LORE_SERVE_TOKEN", raising=False)
    monkeypatch.delenv("LORE_SERVE_TOKEN_FILE", raising=False)
    base = ["serve", str(shared_model_dir()), "--backbone", f"hashing-{D}", "--db",
            str(tmp_path / "db.sqlite")]  # fmt: skip
    refused = CliRunner().invoke(cli, [*base, "--host", "0.0.0.0"])
    assert refused.exit_code == 2 and not started, refused.output
    assert "no token is set" in refused.output and "--allow-unauthenticated" in refused.output

    allowed = CliRunner().invoke(cli, [*base, "--host", "0.0.0.0", "--allow-unauthenticated"])
    assert allowed.exit_code == 0 and len(started) == 1, allowed.output
    assert "warning: serving on 0.0.0.0 with no token" in allowed.output

    monkeypatch.setenv("LORE_SERVE_TOKEN", "s3cret")
    with_token = CliRunner().invoke(cli, [*base, "--host", "0.0.0.0"])
    assert with_token.exit_code == 0 and len(started) == 2 and "warning" not in with_token.output
    assert started[-1]["host"] == "0.0.0.0"


# ---- defect 8: token redaction ----------------------------------------------------------------
def test_redaction_takes_the_whole_query_value_and_any_spelling_of_the_key():
    from lore_rm.serve.redact import redact

    assert redact("GET /a?access_token=ab,c)d]e}f'g\"h&x=1 HTTP/1.1") == (
        "GET /a?access_token=[redacted]&x=1 HTTP/1.1"
    )
    assert redact("/a?access%5Ftoken=se,cr)et#frag") == "/a?access%5Ftoken=[redacted]#frag"
    assert redact("/a?%61ccess%5ftoken=s3") == "/a?%61ccess%5ftoken=[redacted]"
    assert redact("/a?x%5Faccess_token=keep&my_access_token=keep") == (
        "/a?x%5Faccess_token=keep&my_access_token=keep"
    )


def test_a_token_with_punctuation_never_reaches_the_log(model, tmp_path):
    """OpenRLHF sends ?access_token=TOKEN: redaction stopped at , ) ] } ' inside the token and
    logged the rest; access%5Ftoken authenticated and was logged verbatim."""
    import logging

    from uvicorn.logging import AccessFormatter

    secret = "se,cr)et]to}ken'x"
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    app = create_app(model, HashingEmbedder(D), tmp_path / "db.sqlite", token=secret)
    server = LiveServer(app, log_level="info", access_log=True)  # configures the loggers
    keep = Keep()
    keep.setFormatter(AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s'))
    access = logging.getLogger("uvicorn.access")
    access.addHandler(keep)
    try:
        with server as url:
            for key in ("access_token", "access%5Ftoken", "%61ccess_token"):
                r = httpx.get(url + f"/model-info?{key}={secret}&x=1")
                assert r.status_code == 200, (key, r.text)
            wait_until(lambda: len(lines) >= 3)
    finally:
        access.removeHandler(keep)
    assert len(lines) == 3, lines
    assert all("=[redacted]&x=1" in line for line in lines), lines
    for piece in ("se,", "cr)", "et]", "to}", "ken'", "'x"):
        assert not any(piece in line for line in lines), (piece, lines)


# ---- defect 9: bounded per-user history -------------------------------------------------------
def test_a_long_history_costs_its_window_only(model, tmp_path):
    """20k stored comparisons: the refit, the posterior and next-questions use the last
    ``history`` (64 here) of them, and a repeated GET reads no rows (the posterior is kept
    until the weights change). They used to rebuild from every row on every call."""
    import numpy as np

    from lore_rm.serve.user_store import StoredComparison

    db, n, history = tmp_path / "db.sqlite", 20_000, 64
    gen = np.random.default_rng(0)
    x = gen.normal(size=(n, D)).astype(np.float32)
    item = StoredComparison([{"role": "user", "content": "q"}], [], [])
    store = Store(db)
    store.add_comparisons("old", [item] * n, x)
    store.close()
    reads: list[int] = []
    svc = RewardService(model, HashingEmbedder(D), db, history=history)  # refits "old" (stale)
    features_of = svc.store.features_of

    def counting(*args, **kw):
        out = features_of(*args, **kw)
        reads.append(len(out))
        return out

    svc.store.features_of = counting  # type: ignore[method-assign]
    pair = {"candidates": [{"prompt": "q", "response_a": "winter", "response_b": "sunny"}], "n": 1}
    app = create_app(model, svc.embedder, db, service=svc)
    try:
        with LiveServer(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            first = client.get("/users/old").json()
            assert first["n_fit"] == n and first["n_comparisons"] == n
            assert first["posterior"]["n_answers"] == history
            assert client.get("/users/old").json() == first
            assert reads == [history]  # the second GET read nothing
            assert client.post("/users/old/next-questions", json=pair).json()["n_answers"] == 64
            done = _onboard(client, "old", 2)
            assert done["total"] == done["n_fit"] == n + 2
            after = client.get("/users/old").json()
            assert after["posterior"]["n_answers"] == history
            assert after["weights"] != first["weights"]
    finally:
        svc.close()
    assert max(reads) <= history
    # the served weights are the fit on the last `history` rows
    np.testing.assert_allclose(first["weights"], svc._fit("old", x[-history:]), atol=1e-5)


# ---- defect 10: path ids that are not UTF-8, error locations ---------------------------------
def test_a_path_user_id_that_is_not_utf8_is_a_422(model, tmp_path):
    """caf%E9 and caf%FF both decoded to 'caf\\ufffd': two clients, one user."""
    body = {"comparisons": [{"prompt": "q", "chosen": "yes", "rejected": "no"}]}
    with serve(model, tmp_path) as url, httpx.Client(base_url=url, timeout=30) as client:
        for bad in ("caf%E9", "caf%FF", "%C3"):
            r = client.post(f"/users/{bad}/comparisons", json=body)
            assert r.status_code == 422, (bad, r.text)
            assert r.json()["detail"][0]["loc"] == ["path", "user_id"]
            assert "UTF-8" in r.json()["detail"][0]["msg"]
            assert client.get(f"/users/{bad}").status_code == 422
        ok = client.post("/users/caf%C3%A9/comparisons", json=body)  # café, encoded right
        assert ok.status_code == 200 and ok.json()["user"] == "café"
        assert client.get("/users/café").json()["n_comparisons"] == 1


def test_error_locations_name_request_fields_only(model, tmp_path):
    """Locations carried pydantic's union member names: function-after[_valid_unicode(),
    str] and list[Message]."""

    def pair(**fields) -> dict:
        return {"prompt": "q", "chosen": "a", "rejected": "b", **fields}

    bad = [
        ("/users/ann/comparisons", {"comparisons": [pair(prompt=5)]}),
        ("/users/ann/comparisons", {"comparisons": [pair(prompt="\ud800")]}),
        (
            "/users/ann/next-questions",
            {"candidates": [{"prompt": "q", "response_a": [{"role": 1}], "response_b": "b"}]},
        ),
    ]
    with serve(model, tmp_path) as url, httpx.Client(base_url=url, timeout=30) as client:
        for path, body in bad:
            raw = json.dumps(body).encode("utf-8", "surrogatepass")
            r = client.post(path, content=raw, headers={"content-type": "application/json"})
            assert r.status_code == 422, r.text
            for err in r.json()["detail"]:
                assert not any("[" in str(p) or "function" in str(p) for p in err["loc"]), err
                assert err["msg"].startswith(("as text: ", "as a list of messages: ")), err
            locs = {tuple(e["loc"][:4]) for e in r.json()["detail"]}
            if "comparisons" in path:
                assert locs == {("body", "comparisons", 0, "prompt")}, locs
            else:
                assert locs == {("body", "candidates", 0, "response_a")}, locs

"""``lore serve`` (the HTTP service) and ``lore export`` (a standard HF reward model)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

from lore_rm.cli.common import fail, one_line_errors
from lore_rm.errors import LoreError, StorageError


@one_line_errors
def serve(
    model_dir: Path = typer.Argument(..., help="A lore-rm model folder (save_pretrained)."),
    backbone: str | None = typer.Option(
        None,
        help="The embedding backbone: a transformers model id or folder, minilm, or "
        "hashing-<dim> (default: the one the model was fitted with). One other than that "
        "(other weights, chat template or, when no fingerprint is recorded, name) is refused "
        "unless --force-backbone.",
    ),
    force_backbone: bool = typer.Option(
        False,
        "--force-backbone",
        help="Serve with --backbone even though it is not the backbone the model was fitted "
        "on (its width must still be the model's d).",
    ),
    db: Path | None = typer.Option(
        None, help="SQLite file for onboarded users (default: MODEL_DIR/lore-serve.sqlite)."
    ),
    host: str = typer.Option(
        "127.0.0.1",
        help="Interface to listen on. Beyond loopback (e.g. 0.0.0.0) a token is required "
        "($LORE_SERVE_TOKEN or --token-file) unless --allow-unauthenticated.",
    ),
    port: int = typer.Option(8000, help="Port to listen on."),
    workers: int = typer.Option(1, min=1, help="uvicorn worker processes (share the database)."),
    worker_healthcheck_s: int = typer.Option(
        60,
        min=1,
        help="--workers: seconds a worker may take to answer the master's health check before "
        "it is killed and replaced (loading a backbone holds a worker for seconds; uvicorn's "
        "default, 5, killed slow-loading workers).",
    ),
    token_file: Path | None = typer.Option(
        None,
        help="File holding the bearer token (else $LORE_SERVE_TOKEN; neither: no auth).",
    ),
    allow_unauthenticated: bool = typer.Option(
        False,
        "--allow-unauthenticated",
        help="Listen beyond loopback with no token: anyone who can reach the port can read "
        "and change every user's weights.",
    ),
    allowed_host: list[str] = typer.Option(
        [],
        "--allowed-host",
        help="A Host name requests may carry (repeatable). A loopback bind answers only "
        "localhost, 127.0.0.1 and [::1] (what a DNS-rebinding page cannot send) plus these; "
        "another bind answers any Host unless some are given.",
    ),
    header_timeout: float = typer.Option(
        10.0,
        min=0.0,
        help="Seconds a connection may take to send a request's headers (from its opening, "
        "or the first byte of its next request) before it is closed (0: no limit).",
    ),
    max_batch: int = typer.Option(512, min=1, help="Conversations per reward request."),
    max_comparisons: int = typer.Option(1024, min=1, help="Comparisons per onboarding post."),
    max_candidates: int = typer.Option(256, min=1, help="Candidate pairs per next-questions post."),
    max_body_mb: float = typer.Option(16.0, min=0.001, help="Largest request body, MiB."),
    max_text_chars: int = typer.Option(
        1024 * 1024,
        min=1,
        help="Longest text (message, query or prompt), characters; longer: 422.",
    ),
    max_json_items: int = typer.Option(
        400_000,
        min=1,
        help="Most JSON keys and list items per body (counted as the ':' and ',' outside "
        "strings); more: 413 before parsing.",
    ),
    micro_batch: int = typer.Option(
        64,
        min=1,
        help="Micro-batching: most conversations per backbone forward pass, gathered across "
        "concurrent reward requests (1: off, each request runs alone).",
    ),
    max_wait_ms: float = typer.Option(
        2.0,
        min=0.0,
        max=10_000.0,
        help="Micro-batching: how long the oldest waiting request waits for others to join "
        "its batch, ms (0: off).",
    ),
    chunk_ms: float = typer.Option(
        200.0,
        min=1.0,
        max=60_000.0,
        help="Backbone calls are sized to last about this long, ms: large requests are cut "
        "into such chunks and a small request waits at most about one chunk.",
    ),
    user_history: int = typer.Option(
        1024,
        min=0,
        help="A user's refit and posterior use their most recent N stored comparisons "
        "(0: all; every comparison is stored either way): bounds the work of onboarding, "
        "GET /users/{id} and next-questions whatever a user's history.",
    ),
    label_key: str | None = typer.Option(
        None, help="/get_reward labels are JSON objects: read the user id from this key."
    ),
    keep_template: bool = typer.Option(
        False, help="/get_reward: keep prompt strings verbatim (do not parse ChatML/Llama-3)."
    ),
    embed_cache_mb: float = typer.Option(
        256.0,
        min=0.0,
        help="Memory for the embeddings of recently seen texts (repeated candidates and "
        "responses are not embedded again; the hit rate goes to the log), MiB; 0: off.",
    ),
    device: str = typer.Option("cpu", help="Device of the backbone."),
    dtype: str | None = typer.Option(
        None,
        help="Backbone compute dtype, e.g. bf16 or fp32 (default: the one the model's "
        "embeddings were made with, from training.json; else bf16).",
    ),
    torch_threads: int = typer.Option(
        0, min=0, help="torch threads per worker (0: 1 for hashing-*, else torch's default)."
    ),
    log_level: str = typer.Option("info", help="uvicorn log level."),
) -> None:
    """Serve personalised rewards over HTTP (OpenRLHF /get_reward, /reward, onboarding,
    next questions for a user)."""
    from lore_rm.extras import require

    require("lore serve", "uvicorn", "fastapi")
    import uvicorn

    from lore_rm.serve.app import CONFIG_ENV, build_app
    from lore_rm.serve.auth import resolve_token
    from lore_rm.serve.exposure import (
        HEADER_TIMEOUT_ENV,
        LOOPBACK_NAMES,
        HeaderTimeoutProtocol,
        is_loopback,
    )
    from lore_rm.serve.lifeline import MASTER_PID_ENV

    if token_file is not None and not token_file.is_file():
        raise typer.BadParameter(f"{token_file}: no such file", param_hint="--token-file")
    token = resolve_token(None, token_file)
    loopback = is_loopback(host)
    if not loopback and token is None:
        if not allow_unauthenticated:
            fail(
                LoreError(
                    f"--host {host} listens beyond this machine and no token is set: anyone "
                    "who can reach the port could read and change users' weights. Set "
                    "$LORE_SERVE_TOKEN or --token-file, or pass --allow-unauthenticated"
                )
            )
        typer.secho(
            f"warning: serving on {host} with no token (--allow-unauthenticated): anyone who "
            "can reach the port can read and change every user's weights",
            fg="red",
            err=True,
        )
    hosts = list(allowed_host)
    if loopback:
        hosts += list(LOOPBACK_NAMES)
    os.environ[HEADER_TIMEOUT_ENV] = str(header_timeout)  # read by every worker's protocol
    # build_app's keyword arguments, also handed to the workers as JSON
    cfg: dict[str, Any] = {
        "model_dir": str(model_dir),
        "backbone": backbone,
        "db": str(db) if db is not None else None,
        "token_file": str(token_file) if token_file is not None else None,
        "limits": {
            "max_batch": max_batch,
            "max_comparisons": max_comparisons,
            "max_candidates": max_candidates,
            "max_body_bytes": int(max_body_mb * 1024 * 1024),
            "max_text_chars": max_text_chars,
            "max_json_items": max_json_items,
        },
        "batching": {"max_texts": micro_batch, "max_wait_ms": max_wait_ms, "chunk_ms": chunk_ms},
        "query_format": {"label_key": label_key, "parse_templates": not keep_template},
        "device": device,
        "dtype": dtype,
        "torch_threads": torch_threads,
        "force_backbone": force_backbone,
        "embed_cache_mb": embed_cache_mb,
        "allowed_hosts": hosts or None,
        "history": user_history or None,
    }
    try:
        if workers == 1:
            app = build_app(**cfg)
            uvicorn.run(app, host=host, port=port, log_level=log_level, http=HeaderTimeoutProtocol)
        else:
            build_app(**cfg)  # fail here, once, on a bad model, backbone or database
            os.environ[CONFIG_ENV] = json.dumps(cfg)  # the token itself never goes here
            os.environ[MASTER_PID_ENV] = str(os.getpid())  # workers die with this process
            uvicorn.run(
                "lore_rm.serve.app:app_from_env",
                factory=True,
                host=host,
                port=port,
                workers=workers,
                log_level=log_level,
                timeout_worker_healthcheck=worker_healthcheck_s,
                http=HeaderTimeoutProtocol,
            )
    except StorageError as exc:
        fail(exc)


@one_line_errors
def export(
    model_dir: Path = typer.Argument(..., help="A lore-rm model folder."),
    out: Path = typer.Option(..., help="Folder to write the HF reward model to."),
    backbone: str = typer.Option(..., help="The transformers backbone (id or folder)."),
    user: str | None = typer.Option(None, help="The user whose reward to export."),
    basis: bool = typer.Option(False, help="Export the K basis heads (num_labels = K)."),
    db: Path | None = typer.Option(
        None, help="lore serve database with onboarded users (default: the one next to the model)."
    ),
    dtype: str | None = typer.Option(None, help="Save in this dtype (e.g. bfloat16)."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty OUT folder."),
    force_backbone: bool = typer.Option(
        False,
        "--force-backbone",
        help="Export over a --backbone other than the one the model was fitted on (other "
        "weights or chat template; the width must still be d): refused by default, as "
        "lore serve does.",
    ),
) -> None:
    """Write a standard Hugging Face reward model (score head = scale * V w_user, or --basis)."""
    import warnings

    from lore_rm.serve.export import export_reward_model

    if (user is None) == (not basis):
        raise typer.BadParameter("give exactly one of --user ID and --basis", param_hint="--user")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = export_reward_model(
            model_dir,
            out,
            backbone,
            user=user,
            basis=basis,
            db=db,
            dtype=dtype,
            overwrite=overwrite,
            force_backbone=force_backbone,
        )
    for w in caught:
        if "--force-backbone" in str(w.message):
            typer.echo(f"warning: {w.message}", err=True)
    typer.echo(f"wrote {path}")

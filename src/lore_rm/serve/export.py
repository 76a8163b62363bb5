"""Export a personalised reward as a standard Hugging Face sequence-classification model.

The low-rank reward of user ``u`` is linear in the backbone's pooled state ``e`` (the final
hidden state, after the final norm, of the last non-padding token -- exactly what a
``*ForSequenceClassification`` decoder applies its ``score`` head to):
``r_u(e) = c * e @ V @ w_u = e @ h_u`` with ``h_u = c * V @ w_u`` (``c`` is the model's
``reward_scale``: its ``scale`` times its cross-validated ``margin_scale``). Writing ``h_u``
into the ``score`` head gives a folder that TRL, OpenRLHF or rewardbench load with
``AutoModelForSequenceClassification`` and no knowledge of lore-rm:

* ``--user ID``: ``num_labels = 1``, ``score.weight = h_u``: ``logits[:, 0]`` is ``r_u``;
* ``--basis``: ``num_labels = K``, ``score.weight = (c * V).T``: ``logits @ w_u`` is
  ``r_u`` for any user; every user's weights travel in ``lore_user_weights.safetensors``.

Weights of users onboarded through ``lore serve`` live in its database; pass it with ``db``
(the default database next to the model folder is read when it exists).

The folder holds the backbone's own config, tokenizer and weight files with only the head
replaced, so transformers 4.44+ and 5.x both read it (see :mod:`lore_rm.serve.export_files`).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from lore_rm.constants import (
    EXPORT_FILE,
    EXPORT_FORMAT,
    EXPORT_FORMAT_VERSION,
    USER_WEIGHTS_FILE,
)
from lore_rm.dtypes import parse_dtype
from lore_rm.embed.fingerprint import folder_fingerprint
from lore_rm.embed.hf import FALLBACK_TEMPLATE
from lore_rm.embed.match import check_identity
from lore_rm.errors import LoreError, ModelFormatError, OutputExistsError, UnknownUserError
from lore_rm.extras import require
from lore_rm.fit.model import LowRankReward
from lore_rm.io import atomic_folder
from lore_rm.serve.export_files import (
    CONFIG_FILE,
    backbone_folder,
    copy_tokenizer,
    export_config,
    has_safetensors,
    read_json,
    write_json,
    write_weights,
)
from lore_rm.version import __version__
from lore_rm.wording import counted


def load_with_served_users(
    model: LowRankReward | str | os.PathLike, db: str | os.PathLike | None = None
) -> tuple[LowRankReward, Path | None, list[str]]:
    """The model (a folder or an instance) with a ``lore serve`` database's weights over its
    own; the database read (``db``, or the one next to a model folder) and the onboarded ids."""
    if not isinstance(model, LowRankReward):
        source = Path(model)
        model = LowRankReward.from_pretrained(source)
        if db is None:
            from lore_rm.serve.service import default_db_path

            db = default_db_path(source)
    db_path = Path(db) if db is not None else None
    model, onboarded = _with_db_weights(model, db_path)
    return model, db_path, onboarded


def check_users(model: LowRankReward, users: Sequence[str], db: Path | None) -> None:
    """An :class:`UnknownUserError` naming every id in ``users`` that has no weights."""
    if not users or model.rank_ == 0:
        return
    _, known = model.weights_for(list(users), unknown="mean")
    missing = [u for u, k in zip(users, known.tolist(), strict=True) if not k]
    if missing:
        where = (
            f"the database {db}"
            if db is not None and db.is_file()
            else "a serve database (none found)"
        )
        ids = "id" if len(missing) == 1 else "ids"
        raise UnknownUserError(
            f"unknown user {ids} {', '.join(map(repr, missing))}: neither the model "
            f"({counted(len(model.users_), 'user')}) nor {where} has weights for "
            + ("it" if len(missing) == 1 else "them")
        )


def _with_db_weights(model: LowRankReward, db: Path | None) -> tuple[LowRankReward, list[str]]:
    """The model with the database's weights installed over its own (less the users
    deleted through the service); the onboarded ids."""
    if db is None or not Path(db).is_file():
        return model, []
    from lore_rm.serve.service import model_fingerprint
    from lore_rm.serve.user_control import deleted_model_users
    from lore_rm.serve.user_records import deleted_hashes
    from lore_rm.serve.user_store import Store

    store = Store(db)
    try:
        want = model_fingerprint(model)
        have = store.get_meta("model_fingerprint")
        if have is not None and have != want:
            raise ModelFormatError(
                f"{db}: this database belongs to another model (fingerprint {have}, the model "
                f"has {want})"
            )
        users, w, _, _ = store.weights_since(0)
        deleted = deleted_hashes(store)
    finally:
        store.close()
    gone = deleted_model_users(model, deleted)
    if not users and not gone:
        return model, []
    out = model.copy()
    out.drop_users(gone)
    if users:
        out.set_user_weights(users, torch.from_numpy(np.asarray(w, dtype=np.float32)))
    return out, users


@dataclass(frozen=True)
class BackboneInfo:
    """How transformers loads a backbone, and the reward head its sequence classifier has."""

    where: dict  # from_pretrained's location arguments (local_files_only)
    architecture: str  # e.g. LlamaForSequenceClassification
    hidden_size: int  # the score head's input size
    head_bias: bool


def backbone_source(backbone: str | os.PathLike) -> BackboneInfo:
    """How transformers must load ``backbone`` (a folder, or a Hub id), refusing at once, and
    without the network, a backbone that cannot carry a reward head.

    A local folder, or ``HF_HUB_OFFLINE`` set, loads with ``local_files_only`` (no Hub
    retries); the config is then read first and the model built on the meta device, so an
    encoder without a ``score`` head fails before any weight is read.
    """
    from lore_rm.embed.backbones import MINILM_NAMES

    name = str(backbone).strip()
    if name.lower() in MINILM_NAMES or name.lower().startswith("hashing-"):
        raise LoreError(
            f"--backbone {name}: an embedding model without a reward head cannot be exported; "
            "export serves models fitted on a decoder reward model's embeddings (pass that "
            "model's folder or Hub id)"
        )
    path = Path(name).expanduser()
    local = path.is_dir()
    if not local and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise LoreError(f"--backbone {name}: no such folder")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    where = {"local_files_only": True} if local or offline else {}
    from transformers import AutoConfig, AutoModelForSequenceClassification

    try:
        config = AutoConfig.from_pretrained(name, **where)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LoreError(f"--backbone {name}: cannot read its config ({first})") from None
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            skeleton = AutoModelForSequenceClassification.from_config(config)
    except ValueError as exc:
        raise LoreError(f"--backbone {name}: no sequence-classification model ({exc})") from None
    score = getattr(skeleton, "score", None)
    if not isinstance(score, torch.nn.Linear):
        raise LoreError(
            f"--backbone {name}: {type(skeleton).__name__} has no linear 'score' head over the "
            "last token; export supports decoder reward models (Llama, Mistral, Qwen2, ...)"
        )
    return BackboneInfo(where, type(skeleton).__name__, score.in_features, score.bias is not None)


def export_identity(
    backbone: str | os.PathLike, files: Path, tokenizer: Any, hidden_size: int
) -> dict[str, Any]:
    """The identity ``lore embed`` records for ``backbone`` (its content fingerprint, chat
    template, pooling), read from its files without loading its weights."""
    name = str(Path(backbone).resolve()) if Path(backbone).is_dir() else str(backbone)
    template = getattr(tokenizer, "chat_template", None)
    template = template if isinstance(template, str) else FALLBACK_TEMPLATE
    return {
        "name": name,
        "revision": None,
        "fingerprint": folder_fingerprint(files),
        "kind": "RewardModelEmbedder",
        "pooling": "last-token",
        "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest(),
        "d": int(hidden_size),
    }


def reward_head(model: LowRankReward, user: str | None, *, basis: bool) -> torch.Tensor:
    """The score-head matrix (num_labels, d): ``h_u`` (1, d) or ``(reward_scale * V).T``
    (K, d); ``reward_scale`` is ``margin_scale * scale``."""
    if basis:
        if model.rank_ == 0:
            raise LoreError("a rank-0 model has no basis: export one user (the reference head)")
        return (model.reward_scale * model.basis_).T.contiguous().to(torch.float32)
    if user is None and model.rank_ > 0:
        raise LoreError("name the user to export (--user ID), or export the basis (--basis)")
    # rank 0: every user's weight is 1, the population's too
    w, _ = model.weights_for([user], unknown="mean" if model.rank_ == 0 else "error")
    return (model.reward_scale * model.basis_ @ w[0])[None, :].contiguous().to(torch.float32)


def export_reward_model(
    model: LowRankReward | str | os.PathLike,
    out: str | os.PathLike,
    backbone: str | os.PathLike,
    *,
    user: str | None = None,
    basis: bool = False,
    db: str | os.PathLike | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
    force_backbone: bool = False,
) -> Path:
    """Write a standard HF sequence-classification reward model to ``out``.

    ``backbone``: the transformers model the embeddings came from (a Hub id or folder). It
    is checked as ``lore serve`` checks its backbone: other weights (the content
    fingerprint), another chat template or, without a recorded fingerprint, another name
    are refused unless ``force_backbone`` (another width always is).
    ``db``: a ``lore serve`` database whose weights override the model's (default: the one
    next to the model folder, when ``model`` is a folder and it exists). The folder is
    written under a temporary name and renamed, so ``out`` is never left half-written.
    """
    require("export", "transformers", extra="serve")
    from transformers import AutoTokenizer

    source = None if isinstance(model, LowRankReward) else Path(model)
    model, db, onboarded = load_with_served_users(model, db)
    if user is not None and not basis:
        check_users(model, [user], db)
    head = reward_head(model, user, basis=basis)
    k, d = head.shape
    torch_dtype = _torch_dtype(dtype)

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(out, "exists and is not empty")
    info = backbone_source(backbone)
    if info.hidden_size != d:
        raise LoreError(
            f"{backbone}: hidden size {info.hidden_size} but the lore-rm model has d = {d}; "
            "export with the backbone the embeddings came from"
        )
    files = backbone_folder(str(backbone), local_files_only=bool(info.where))
    tokenizer = AutoTokenizer.from_pretrained(str(files), local_files_only=True)
    forced = check_identity(
        source,
        model.backbone,
        d,
        export_identity(backbone, files, tokenizer, info.hidden_size),
        force=force_backbone,
        verb="export",
    )
    if forced:
        warnings.warn(
            "exporting with a backbone other than the one the model was fitted on "
            f"(--force-backbone): {'; '.join(forced)}",
            stacklevel=2,
        )
    pad_token = None
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise LoreError(f"{backbone}: the tokenizer has neither a pad nor an eos token")
        pad_token = tokenizer.eos_token
    labels = [f"basis_{i}" for i in range(k)] if basis else ["reward"]
    config = export_config(
        read_json(files / CONFIG_FILE),
        architecture=info.architecture,
        labels=labels,
        pad_token_id=tokenizer.eos_token_id if pad_token else tokenizer.pad_token_id,
        dtype=None if torch_dtype is None else str(torch_dtype).removeprefix("torch."),
    )

    all_users = list(model.users_)
    user_weights = None
    if not basis and model.rank_ > 0:
        user_weights = [float(v) for v in model.weights_for([user])[0][0]]
    manifest = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "lore_rm_version": __version__,
        "mode": "basis" if basis else "user",
        "user": None if basis else user,
        "weights": user_weights,
        "scale": float(model.scale_),
        "margin_scale": float(model.margin_scale_),
        "rank": int(model.rank_),
        "d": int(d),
        "source_model": str(source) if source is not None else None,
        "lore_backbone": model.backbone,
        "backbone": str(backbone),
        "onboarded_users_from_db": len(onboarded),
        "reward": (
            "logits[:, 0] is the user's reward"
            if not basis
            else f"reward of user u = logits @ user_weights[u] (see {USER_WEIGHTS_FILE})"
        ),
    }
    if basis:
        manifest["users"] = all_users

    # refused above when out holds files: an empty out is replaced
    with atomic_folder(out, overwrite=True) as tmp:
        if has_safetensors(files):
            write_weights(files, tmp, head, bias=info.head_bias, dtype=torch_dtype)
        else:
            _save_loaded(str(backbone), info, head, torch_dtype, tmp)
        write_json(tmp / CONFIG_FILE, config)
        copy_tokenizer(
            files, tmp, pad_token=pad_token, model_input_names=tokenizer.model_input_names
        )
        (tmp / EXPORT_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        if basis:
            save_file(
                {
                    "user_weights": model.user_weights_.contiguous().to(torch.float32),
                    "population_weights": model.population_weights_.contiguous(),
                },
                str(tmp / USER_WEIGHTS_FILE),
            )
        (tmp / "README.md").write_text(_card(manifest))
    return out


def _torch_dtype(name: str | None) -> torch.dtype | None:
    return None if name is None else parse_dtype(name, what="--dtype")


def _save_loaded(
    backbone: str, info: BackboneInfo, head: torch.Tensor, dtype: torch.dtype | None, out: Path
) -> None:
    """Weights for a backbone without safetensors files: loaded by transformers, the head set,
    saved by it (key names as the running transformers writes them)."""
    from transformers import AutoModelForSequenceClassification

    kwargs = {"num_labels": head.shape[0], "ignore_mismatched_sizes": True, **info.where}
    if dtype is not None:
        kwargs["dtype"] = dtype
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "newly initialised score weights": replaced below
        clf = AutoModelForSequenceClassification.from_pretrained(backbone, **kwargs)
    with torch.no_grad():
        clf.score.weight.copy_(head.to(clf.score.weight.dtype))
        if clf.score.bias is not None:
            clf.score.bias.zero_()
    clf.save_pretrained(out)


def _card(m: dict) -> str:
    what = (
        f"the personalised reward of user `{m['user']}`"
        if m["mode"] == "user"
        else f"the {m['rank']} basis rewards of a lore-rm model"
    )
    return (
        "# Reward model exported by lore-rm\n\n"
        f"A standard sequence-classification model over `{m['backbone']}` whose score head is "
        f"{what}.\n\n{m['reward']}.\n\n"
        "```python\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        "model = AutoModelForSequenceClassification.from_pretrained('THIS_FOLDER')\n"
        "tok = AutoTokenizer.from_pretrained('THIS_FOLDER')\n"
        "text = tok.apply_chat_template(messages, tokenize=False)\n"
        "batch = tok(text, return_tensors='pt', add_special_tokens=False)\n"
        "reward = model(**batch).logits[0, 0]\n```\n"
    )

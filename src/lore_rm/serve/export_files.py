"""The files of an exported reward model: the backbone's own, with only the reward head changed.

An export must load in transformers 4.x (rewardbench pins 4.51; lore-rm supports 4.44+) and in
5.x. Re-saving the backbone with the running transformers is not enough: transformers 5 writes
the rope settings only under ``rope_parameters`` (4.x silently falls back to its defaults and
scores differently), names its tokenizer class ``TokenizersBackend`` and lists extra special
tokens in a form 4.x cannot read. So the backbone's files are copied byte for byte and only
these edits are made:

* ``config.json``: ``architectures``, the labels (``id2label`` / ``label2id``), ``pad_token_id``
  when it has none; and, for a config written by transformers 5, the 4.x spellings beside the
  5.x ones (``rope_theta`` / ``rope_scaling`` / ``partial_rotary_factor`` from
  ``rope_parameters``, ``torch_dtype`` from ``dtype``), always equal to them;
* ``tokenizer_config.json``: a pad token when it has none; for a transformers 5 tokenizer, the
  class ``PreTrainedTokenizerFast``, its extra special tokens as ``additional_special_tokens``
  and the chat template inline (4.44 does not read ``chat_template.jinja``);
* ``tokenizer.json``: BPE merges as ``"a b"`` strings (``tokenizers`` 0.20+ writes pairs,
  which the ``tokenizers`` 0.19 of transformers 4.44 cannot parse);
* weights: safetensors shards without a ``score.*`` / ``lm_head.*`` tensor are copied as they
  are; the others are rewritten without them, and ``score.weight`` (+ a zero ``score.bias``
  when the head has one) is added, so every other key keeps the name the backbone's files gave
  it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from lore_rm.errors import LoreError

CONFIG_FILE = "config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_JSON = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
TOKENIZER_FILES = (
    "tokenizer.json",
    TOKENIZER_CONFIG_FILE,
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    CHAT_TEMPLATE_FILE,
    "chat_template.json",
)
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
HEAD_PREFIXES = ("score.", "lm_head.")  # the old reward head, a language-model head
V5_TOKENIZER_CLASS = "TokenizersBackend"  # transformers 5's name for a tokenizer.json tokenizer


def backbone_folder(name: str, local_files_only: bool) -> Path:
    """The folder holding ``name``'s files: itself, or its Hub snapshot (config, tokenizer and
    safetensors weights only)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    patterns = [CONFIG_FILE, *TOKENIZER_FILES, WEIGHTS_FILE, "model-*.safetensors"]
    try:
        return Path(
            snapshot_download(
                name,
                allow_patterns=[*patterns, WEIGHTS_INDEX_FILE],
                local_files_only=local_files_only,
            )
        )
    except Exception as exc:  # huggingface_hub raises many kinds (offline, 404, gated)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LoreError(f"--backbone {name}: cannot read its files ({first})") from None


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LoreError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise LoreError(f"{path}: expected a JSON object")
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def export_config(
    raw: dict[str, Any],
    *,
    architecture: str,
    labels: list[str],
    pad_token_id: int | None,
    dtype: str | None,
) -> dict[str, Any]:
    """The backbone's ``config.json`` as a reward model with ``labels`` readable by 4.x and 5.x."""
    cfg = dict(raw)
    cfg["architectures"] = [architecture]
    cfg["id2label"] = {str(i): label for i, label in enumerate(labels)}
    cfg["label2id"] = {label: i for i, label in enumerate(labels)}
    if "num_labels" in cfg:
        cfg["num_labels"] = len(labels)
    if cfg.get("pad_token_id") is None and pad_token_id is not None:
        cfg["pad_token_id"] = pad_token_id
    if dtype is not None:
        cfg["torch_dtype"] = cfg["dtype"] = dtype
    elif cfg.get("torch_dtype") is None and cfg.get("dtype") is not None:
        cfg["torch_dtype"] = cfg["dtype"]
    _add_legacy_rope(cfg)
    return cfg


def _add_legacy_rope(cfg: dict[str, Any]) -> None:
    """4.x's ``rope_theta`` / ``rope_scaling`` / ``partial_rotary_factor`` from a 5.x
    ``rope_parameters`` (one set for all layers; a per-layer-type set is left as it is)."""
    rope = cfg.get("rope_parameters")
    if not isinstance(rope, dict) or not ({"rope_type", "rope_theta"} & rope.keys()):
        return
    for key in ("rope_theta", "partial_rotary_factor"):
        if key in rope and cfg.get(key) is None:
            cfg[key] = rope[key]
    scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
    # transformers 5 reads rope_scaling over rope_parameters when both are set: they must agree
    if scaling.get("rope_type", "default") != "default" and cfg.get("rope_scaling") is None:
        cfg["rope_scaling"] = scaling


def export_tokenizer_config(
    raw: dict[str, Any],
    *,
    chat_template: str | None,
    pad_token: str | None,
    model_input_names: list[str],
) -> dict[str, Any]:
    """The backbone's ``tokenizer_config.json`` readable by 4.x and 5.x (``chat_template``:
    the content of a ``chat_template.jinja`` beside it; ``model_input_names``: what the
    tokenizer returns now, kept by a tokenizer class whose 4.x default differs)."""
    cfg = dict(raw)
    if cfg.get("tokenizer_class") == V5_TOKENIZER_CLASS:
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        # 4.x's PreTrainedTokenizerFast also returns token_type_ids, which decoders refuse
        cfg.setdefault("model_input_names", list(model_input_names))
    extra = cfg.get("extra_special_tokens")
    if isinstance(extra, list):  # 5.x's list; 4.x expects a dict of named tokens here
        del cfg["extra_special_tokens"]
        known = list(cfg.get("additional_special_tokens") or [])
        cfg["additional_special_tokens"] = known + [t for t in extra if t not in known]
    if chat_template is not None and cfg.get("chat_template") is None:
        cfg["chat_template"] = chat_template
    if pad_token is not None:
        cfg["pad_token"] = pad_token
    return cfg


def legacy_merges(tokenizer: dict) -> dict | None:
    """``tokenizer.json`` with its BPE merges written as ``"a b"`` strings, the form every
    ``tokenizers`` reads; ``tokenizers`` 0.20 and later write ``["a", "b"]`` pairs, which
    0.19 (what transformers 4.44 pins) cannot parse. None when there is nothing to change,
    or when a merged token holds a space (only the pair form can say that)."""
    model = tokenizer.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE":
        return None
    merges = model.get("merges")
    if not isinstance(merges, list) or not any(isinstance(m, list) for m in merges):
        return None
    if not all(
        isinstance(m, list) and len(m) == 2 and all(isinstance(p, str) and " " not in p for p in m)
        for m in merges
    ):
        return None
    return {**tokenizer, "model": {**model, "merges": [f"{a} {b}" for a, b in merges]}}


def copy_tokenizer(
    src: Path, dst: Path, *, pad_token: str | None, model_input_names: list[str]
) -> None:
    """The backbone's tokenizer files, ``tokenizer_config.json`` edited for 4.x and 5.x and
    ``tokenizer.json``'s BPE merges in the string form (:func:`legacy_merges`)."""
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    if (dst / TOKENIZER_JSON).is_file():
        legacy = legacy_merges(read_json(dst / TOKENIZER_JSON))
        if legacy is not None:
            (dst / TOKENIZER_JSON).write_text(
                json.dumps(legacy, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
            )
    config = src / TOKENIZER_CONFIG_FILE
    if not config.is_file():
        if pad_token is not None:
            raise LoreError(f"{src}: no {TOKENIZER_CONFIG_FILE} to record the pad token in")
        return
    template = src / CHAT_TEMPLATE_FILE
    chat_template = template.read_text(encoding="utf-8") if template.is_file() else None
    raw = read_json(config)
    edited = export_tokenizer_config(
        raw,
        chat_template=chat_template,
        pad_token=pad_token,
        model_input_names=model_input_names,
    )
    if edited != raw:
        write_json(dst / TOKENIZER_CONFIG_FILE, edited)


def has_safetensors(src: Path) -> bool:
    return (src / WEIGHTS_INDEX_FILE).is_file() or (src / WEIGHTS_FILE).is_file()


def write_weights(
    src: Path, dst: Path, head: torch.Tensor, *, bias: bool, dtype: torch.dtype | None
) -> None:
    """The backbone's safetensors weights with ``head`` as ``score.weight`` (see the module
    docstring); ``dtype``: cast every floating tensor to it."""
    from safetensors.torch import load_file, save_file

    index = read_json(src / WEIGHTS_INDEX_FILE) if (src / WEIGHTS_INDEX_FILE).is_file() else None
    weight_map: dict[str, str] = dict(index["weight_map"]) if index else {}
    shards = sorted(set(weight_map.values())) if index else [WEIGHTS_FILE]
    target = weight_map.get("score.weight", shards[-1])
    new_map: dict[str, str] = {}
    total = 0
    for shard in shards:
        sizes, metadata = _header(src / shard)
        if (
            shard != target
            and dtype is None
            and not any(k.startswith(HEAD_PREFIXES) for k in sizes)
        ):
            shutil.copyfile(src / shard, dst / shard)
        else:
            tensors = load_file(str(src / shard))
            if dtype is not None:
                tensors = {
                    k: t.to(dtype) if t.is_floating_point() else t for k, t in tensors.items()
                }
            if shard == target:
                tensors = _with_head(tensors, head, bias=bias, dtype=dtype)
            else:
                tensors = {k: t for k, t in tensors.items() if not k.startswith(HEAD_PREFIXES)}
            save_file(tensors, str(dst / shard), metadata={**metadata, "format": "pt"})
            sizes = {k: t.numel() * t.element_size() for k, t in tensors.items()}
        new_map.update(dict.fromkeys(sizes, shard))
        total += sum(sizes.values())
    if index is not None:
        out = dict(index)
        out["metadata"] = {**(index.get("metadata") or {}), "total_size": total}
        out["weight_map"] = dict(sorted(new_map.items()))
        write_json(dst / WEIGHTS_INDEX_FILE, out)


def _header(path: Path) -> tuple[dict[str, int], dict[str, str]]:
    """A safetensors file's tensor sizes in bytes and its metadata, from its header alone."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as exc:
        raise LoreError(f"{path}: not a readable safetensors file ({exc})") from None
    metadata = header.pop("__metadata__", None) or {}
    return {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items()}, metadata


def _with_head(
    tensors: dict[str, torch.Tensor], head: torch.Tensor, *, bias: bool, dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    """``tensors`` without the old heads, plus ``head`` in the backbone's dtype: that of its
    old reward head, else of its first floating tensor (float32 when none)."""
    old = tensors.get("score.weight")
    if dtype is None:
        floating = [t for t in tensors.values() if t.is_floating_point()]
        dtype = old.dtype if old is not None else (floating[0].dtype if floating else None)
    out = {k: t for k, t in tensors.items() if not k.startswith(HEAD_PREFIXES)}
    out["score.weight"] = head.to(dtype or torch.float32).contiguous()
    if bias:
        out["score.bias"] = torch.zeros(head.shape[0], dtype=out["score.weight"].dtype)
    return out

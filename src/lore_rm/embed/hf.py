"""Backbones built on Hugging Face ``transformers``: decoder reward models and encoders.

* :class:`RewardModelEmbedder` — a ``...ForSequenceClassification`` reward model (the paper's
  ``Skywork/Skywork-Reward-Llama-3.1-8B-v0.2``). Each conversation is rendered with the
  tokenizer's chat template; the embedding is the final hidden state of the last real token
  (found from the attention mask, so left and right padding give the same vector); the
  reference head is the ``score`` layer's weight row — the layer that turns that very hidden
  state into the model's reward logit.
* :class:`EncoderEmbedder` — an encoder (BERT family, e.g. all-MiniLM-L6-v2) with mean
  pooling over real tokens (optionally L2-normalised, as sentence-transformers does). It has no
  reward head: ``reference_head()`` is ``None``.

Both tokenise everything first, sort by length, and run padded batches of similar lengths;
long inputs keep their *end* (the response being scored) and their leading BOS / CLS token.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from lore_rm.conversation import Conversation, check_conversation
from lore_rm.devices import as_device
from lore_rm.dtypes import COMPUTE, name_of, parse_dtype
from lore_rm.embed.fingerprint import backbone_fingerprint
from lore_rm.errors import LoreError
from lore_rm.wording import counted

# Used when a tokenizer has no chat template (recorded in the store's manifest by its hash).
FALLBACK_TEMPLATE = "{role}: {content}"
#: a text longer than this many characters per token of ``max_length`` is cut to its end
#: before tokenising (a 15 MiB text took 70 s and 4.7 GB to tokenise whole). When the end
#: holds fewer than TAIL_MARGIN tokens more than are kept (whitespace, one huge word that is a
#: single [UNK]), the cut is widened TAIL_GROWTH-fold at a time up to TAIL_WIDEST times the
#: first cut, and what the widest cut yields is used: the cost is bounded by ``max_length``
#: whatever the text.
MAX_CHARS_PER_TOKEN = 32
TAIL_MARGIN = 16
TAIL_GROWTH = 4
TAIL_WIDEST = 16


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` / ``"auto"``: this process's GPU (``LOCAL_RANK`` under torchrun) or the CPU."""
    return as_device(device)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """The compute dtype (:mod:`lore_rm.dtypes`), or ``"auto"``: the checkpoint's own."""
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    return parse_dtype(dtype, allowed=COMPUTE, also=["auto"])


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _revision(model_config: Any, path: str) -> str:
    """The Hub commit when loaded from the Hub cache, else a fingerprint of the local files."""
    commit = getattr(model_config, "_commit_hash", None)
    if commit:
        return str(commit)
    folder = Path(path)
    if folder.is_dir():
        h = hashlib.sha256()
        cfg = folder / "config.json"
        if cfg.is_file():
            h.update(cfg.read_bytes())
        for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
        return "local-" + h.hexdigest()[:16]
    return "unknown"


class _TransformersEmbedder:
    """Shared machinery: tokenise, sort by length, pad, batch, pool, restore order."""

    pooling: str = ""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        name: str,
        *,
        device: torch.device,
        batch_size: int,
        max_length: int,
        padding_side: str | None,
        revision: str,
        fingerprint: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise LoreError(f"batch_size must be at least 1, got {batch_size}")
        if max_length < 2:
            raise LoreError(f"max_length must be at least 2, got {max_length}")
        self.model: Any = model.eval()  # a transformers model: attributes by its config
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        side = padding_side or getattr(tokenizer, "padding_side", "right") or "right"
        if side not in ("left", "right"):
            raise LoreError(f"padding_side must be 'left' or 'right', got {side!r}")
        self.padding_side = side
        self.revision = revision
        self.fingerprint = fingerprint  # of the checkpoint's files (lore_rm.embed.fingerprint)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_id = int(pad)
        self.truncated = 0  # texts shortened to max_length so far
        self.forwarded = 0  # texts run through the model so far (after deduplication)

    # -- to implement ---------------------------------------------------------------------
    def _token_ids(self, conversations: Sequence[Conversation]) -> list[list[int]]:
        raise NotImplementedError

    def _pool(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def template_hash(self) -> str:
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def identity(self) -> dict[str, Any]:
        """What makes two runs produce the same embeddings (checked against store manifests)."""
        return {
            "name": self.name,
            "revision": self.revision,
            "fingerprint": self.fingerprint,
            "kind": type(self).__name__,
            "pooling": self.pooling,
            "dtype": name_of(self.dtype),
            "chat_template_sha256": self.template_hash(),
            "max_length": self.max_length,
            "d": self.dim,
        }

    def _encode(self, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        """Token ids of ``texts``, tokenising only the end of very long texts: the ids kept
        after truncation (the first token and the last ones) are the same as from the whole
        text whenever its last ``max_length * MAX_CHARS_PER_TOKEN * TAIL_WIDEST`` characters
        hold enough tokens, and the cost is bounded by ``max_length``, never by the text."""
        bound = self.max_length * MAX_CHARS_PER_TOKEN
        long = [i for i, t in enumerate(texts) if len(t) > bound]
        cut = list(texts)
        bos = self.tokenizer.bos_token if not add_special_tokens else None
        heads = {}
        for i in long:
            heads[i] = bos if bos and texts[i].startswith(bos) else ""
            cut[i] = heads[i] + texts[i][-bound:]
        ids = self.tokenizer(cut, add_special_tokens=add_special_tokens, verbose=False)["input_ids"]
        for i in long:  # rare: the end held too few tokens, so the cut could show
            width = bound
            while len(ids[i]) < self.max_length + TAIL_MARGIN and width < len(texts[i]):
                width = min(width * TAIL_GROWTH, bound * TAIL_WIDEST)
                if width >= len(texts[i]):
                    text = texts[i]
                else:
                    text = heads[i] + texts[i][-width:]
                ids[i] = self.tokenizer(
                    [text], add_special_tokens=add_special_tokens, verbose=False
                )["input_ids"][0]
                if width == bound * TAIL_WIDEST:
                    break
        return [list(x) for x in ids]

    def _truncate(self, ids: list[int], keep_first: bool, room: int) -> list[int]:
        if len(ids) <= room:
            return ids
        self.truncated += 1
        if keep_first:
            return ids[:1] + ids[len(ids) - (room - 1) :]
        return ids[len(ids) - room :]

    def _pad(self, batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(x) for x in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, x in enumerate(batch):
            n = len(x)
            if self.padding_side == "left":
                ids[i, width - n :] = torch.tensor(x, dtype=torch.long)
                mask[i, width - n :] = 1
            else:
                ids[i, :n] = torch.tensor(x, dtype=torch.long)
                mask[i, :n] = 1
        return ids, mask

    @torch.inference_mode()
    def embed(
        self,
        conversations: Sequence[Conversation],
        progress: Callable[[int], object] | None = None,
    ) -> torch.Tensor:
        """Float32 (n, d) CPU tensor in input order; batches of similar lengths.

        ``progress`` is called with the number of texts each batch finished.
        """
        n = len(conversations)
        if n == 0:
            return torch.zeros(0, self.dim, dtype=torch.float32)
        before = self.truncated
        token_ids = self._token_ids(conversations)
        if self.truncated > before:
            warnings.warn(
                f"{self.name}: {self.truncated - before} of {counted(n, 'text')} "
                f"{'was' if self.truncated - before == 1 else 'were'} longer than "
                f"max_length = {self.max_length} tokens and kept only their last tokens",
                stacklevel=3,  # past torch's inference_mode wrapper, to the caller
            )
        # identical token sequences are computed once
        first: dict[tuple[int, ...], int] = {}
        slot = [first.setdefault(tuple(x), len(first)) for x in token_ids]
        unique = [list(k) for k in first]
        self.forwarded += len(unique)
        pooled_unique = torch.zeros(len(unique), self.dim, dtype=torch.float32)
        order = sorted(range(len(unique)), key=lambda i: -len(unique[i]))
        copies = torch.bincount(torch.tensor(slot), minlength=len(unique)).tolist()
        for start in range(0, len(unique), self.batch_size):
            rows = order[start : start + self.batch_size]
            ids, mask = self._pad([unique[i] for i in rows])
            pooled = self._pool(ids.to(self.device), mask.to(self.device))
            pooled_unique[torch.tensor(rows)] = pooled.float().cpu()
            if progress is not None:
                progress(sum(copies[i] for i in rows))
        out = pooled_unique[torch.tensor(slot)]
        return out


class RewardModelEmbedder(_TransformersEmbedder):
    """A decoder ``...ForSequenceClassification`` reward model: last-real-token pooling.

    ``reference_head()`` is row 0 of ``score.weight``; ``reference_bias()`` the score bias
    (``None`` for Llama / Mistral / Qwen / Gemma heads, which have none). With a bias the
    model's logit is ``e @ head + bias``; lore-rm's rank-0 reward is ``e @ head``, which differs
    by that constant only and gives the same preferences.
    """

    pooling = "last-token"

    def __init__(self, model: torch.nn.Module, tokenizer: Any, name: str, **kw: Any) -> None:
        super().__init__(model, tokenizer, name, **kw)
        template = getattr(tokenizer, "chat_template", None)
        self.chat_template = template if isinstance(template, str) else None
        if self.chat_template is None:
            warnings.warn(
                f"{name}: the tokenizer has no chat template; conversations are rendered as "
                "'role: content' blocks",
                stacklevel=3,
            )
        base = getattr(model, "base_model_prefix", "model")
        body: Any = getattr(model, base, None) or model.base_model  # a transformers model
        self.body = body
        self._head = _find_score_layer(model, name)
        import inspect

        params = inspect.signature(self.body.forward).parameters
        self._takes_positions = "position_ids" in params

    def template_hash(self) -> str:
        return _sha256(self.chat_template or FALLBACK_TEMPLATE)

    def render(self, conversation: Conversation) -> str:
        """The text the model reads for one conversation."""
        check_conversation(conversation)
        if self.chat_template is not None:
            return self.tokenizer.apply_chat_template(conversation, tokenize=False)
        return "\n\n".join(
            FALLBACK_TEMPLATE.format(role=m["role"], content=m["content"]) for m in conversation
        )

    def _token_ids(self, conversations: Sequence[Conversation]) -> list[list[int]]:
        texts = [self.render(c) for c in conversations]
        encoded = self._encode(texts, add_special_tokens=False)
        bos = self.tokenizer.bos_token_id
        return [
            self._truncate(list(x), keep_first=bool(x) and x[0] == bos, room=self.max_length)
            for x in encoded
        ]

    def _pool(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "use_cache": False}
        if self._takes_positions:
            # Positions count real tokens only, so left padding does not shift them.
            kwargs["position_ids"] = (mask.cumsum(dim=1) - 1).clamp(min=0)
        hidden = self.body(**kwargs).last_hidden_state
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (positions * mask).argmax(dim=1)  # rightmost real token, either padding side
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def reference_head(self) -> torch.Tensor | None:
        if self._head is None:
            return None
        return self._head.weight.detach()[0].float().cpu().clone()

    def reference_bias(self) -> float | None:
        if self._head is None or self._head.bias is None:
            return None
        return float(self._head.bias.detach()[0].float())

    @torch.inference_mode()
    def reward_logits(self, conversations: Sequence[Conversation]) -> torch.Tensor:
        """The backbone's own reward (n,), computed by its ``score`` layer in its dtype."""
        if self._head is None:
            raise LoreError(f"{self.name} has no single-output score layer")
        token_ids = self._token_ids(conversations)
        out = []
        for start in range(0, len(token_ids), self.batch_size):
            ids, mask = self._pad(token_ids[start : start + self.batch_size])
            h = self._pool(ids.to(self.device), mask.to(self.device))
            out.append(self._head(h)[:, 0].float().cpu())
        return torch.cat(out) if out else torch.zeros(0)


class EncoderEmbedder(_TransformersEmbedder):
    """An encoder with mean pooling over real tokens (optionally L2-normalised); no reward head.

    A conversation is rendered as ``role: content`` blocks separated by blank lines.
    """

    def __init__(
        self, model: torch.nn.Module, tokenizer: Any, name: str, *, normalize: bool, **kw: Any
    ) -> None:
        super().__init__(model, tokenizer, name, **kw)
        self.normalize = normalize
        self.pooling = "mean+l2" if normalize else "mean"

    def template_hash(self) -> str:
        return _sha256(FALLBACK_TEMPLATE)

    def render(self, conversation: Conversation) -> str:
        check_conversation(conversation)
        return "\n\n".join(
            FALLBACK_TEMPLATE.format(role=m["role"], content=m["content"]) for m in conversation
        )

    def _token_ids(self, conversations: Sequence[Conversation]) -> list[list[int]]:
        texts = [self.render(c) for c in conversations]
        encoded = self._encode(texts, add_special_tokens=True)
        # keep [CLS] and the end of the text (the response, then [SEP])
        return [self._truncate(list(x), keep_first=True, room=self.max_length) for x in encoded]

    def _pool(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
        return pooled

    def reference_head(self) -> torch.Tensor | None:
        return None


def _find_score_layer(model: torch.nn.Module, name: str) -> torch.nn.Linear | None:
    head = getattr(model, "score", None)
    if not isinstance(head, torch.nn.Linear):
        warnings.warn(f"{name}: no `score` linear layer; no reference head", stacklevel=3)
        return None
    if head.out_features != 1:
        warnings.warn(
            f"{name}: the score layer has {head.out_features} outputs, not one reward; "
            "no reference head",
            stacklevel=3,
        )
        return None
    return head


def load_transformers_backbone(
    path: str,
    *,
    dtype: str | torch.dtype = "bf16",
    device: str | torch.device | None = None,
    batch_size: int = 8,
    max_length: int = 4096,
    attn_implementation: str | None = None,
    padding_side: str | None = None,
    pooling: str = "auto",
    normalize: bool = False,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> RewardModelEmbedder | EncoderEmbedder:
    """Load a decoder reward model (last-token pooling) or an encoder (mean pooling)."""
    try:
        from transformers import (
            AutoConfig,
            AutoModel,
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )
    except ImportError as exc:
        from lore_rm.extras import missing_extra

        raise missing_extra(f"the backbone {path}", "transformers", "embed", str(exc)) from None
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    common: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision is not None:
        common["revision"] = revision
    try:
        config = AutoConfig.from_pretrained(path, **common)
    except OSError as exc:
        raise LoreError(
            f"cannot load backbone {path!r}: not a local model folder and not reachable on the "
            f"Hugging Face Hub ({exc})"
        ) from exc
    if pooling == "auto":
        pooling = "mean" if _is_encoder(config) else "last-token"
    if pooling not in ("mean", "last-token"):
        raise LoreError(f"pooling must be 'auto', 'mean' or 'last-token', got {pooling!r}")
    kwargs: dict[str, Any] = {**common, "dtype": torch_dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    tokenizer = AutoTokenizer.from_pretrained(path, **common)
    rev = revision or _revision(config, path)
    name = str(Path(path).resolve()) if Path(path).is_dir() else path
    settings = dict(
        device=dev,
        batch_size=batch_size,
        max_length=max_length,
        padding_side=padding_side,
        revision=rev,
        fingerprint=backbone_fingerprint(path, revision),
    )
    if pooling == "mean":
        model = AutoModel.from_pretrained(path, **kwargs).to(dev)
        limit = getattr(config, "max_position_embeddings", max_length)
        settings["max_length"] = min(max_length, int(limit))
        return EncoderEmbedder(model, tokenizer, name, normalize=normalize, **settings)
    model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs).to(dev)
    return RewardModelEmbedder(model, tokenizer, name, **settings)


_ENCODER_TYPES = {
    "bert",
    "roberta",
    "xlm-roberta",
    "distilbert",
    "mpnet",
    "electra",
    "deberta",
    "deberta-v2",
    "albert",
    "camembert",
    "modernbert",
    "nomic_bert",
    "e5",
}


def _is_encoder(config: Any) -> bool:
    return getattr(config, "model_type", "") in _ENCODER_TYPES

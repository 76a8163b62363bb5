"""Turning what trainers send into conversations (prompt messages + the scored response).

Shared by the HTTP service, the TRL reward function and onboarding; no web dependency.

* A prompt is a string (one user message) or a list of ``{"role", "content"}`` messages.
* A response is a string (one assistant message) or a list of messages (TRL's
  conversational completions: ``[{"role": "assistant", "content": ...}]``).
* OpenRLHF sends ``query`` (prompt + response, one string, chat template already applied
  by the policy's tokenizer) and ``prompts`` (the prompt string it generated from). The
  response is ``query[len(prompt):]``; trailing end-of-turn / padding tokens are stripped
  (with the whitespace after them).
* Whitespace: every entry point scores a text as given, as ``lore embed`` embedded the
  dataset's texts at fit time; only what a chat template adds is removed.
  The prompt string is parsed back into messages when it is a ChatML
  (``<|im_start|>role ... <|im_end|>``) or Llama-3
  (``<|start_header_id|>role<|end_header_id|> ... <|eot_id|>``) rendering; any other
  string becomes one user message, verbatim.
* A query that does not start with its prompt (OpenRLHF truncated a long prompt) is read
  on its own (:func:`query_conversation`): the whole query is the conversation the policy
  saw, its template turns parsed (the last one is the response), else the whole string is
  the response.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from lore_rm.conversation import MESSAGE_ROLES, Conversation
from lore_rm.conversation import check_conversation as check_messages
from lore_rm.errors import DataError

# removed (repeatedly) from the end of an OpenRLHF response before it is scored
DEFAULT_STRIP_SUFFIXES: tuple[str, ...] = (
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<end_of_turn>",
    "<eos>",
    "</s>",
    "<pad>",
    "<|finetune_right_pad_id|>",
)

_CHATML = re.compile(r"<\|im_start\|>(system|user|assistant)\n?(.*?)(?:<\|im_end\|>|\Z)", re.S)
_LLAMA3 = re.compile(
    r"<\|start_header_id\|>(system|user|assistant)<\|end_header_id\|>(?:\n\n)?(.*?)"
    r"(?:<\|eot_id\|>|\Z)",
    re.S,
)


def lone_surrogate(text: str) -> str | None:
    """Why ``text`` is not valid Unicode (a lone surrogate, which JSON's ``"\\ud800"`` can
    carry but nothing can encode), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"holds a lone surrogate (U+{ord(text[exc.start]):04X} at character {exc.start}); "
            "text must be valid Unicode"
        )
    return None


def as_messages(value: Any, default_role: str, where: str) -> list[dict[str, str]]:
    """A string (one ``default_role`` message) or a list of messages, checked."""
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list | tuple):
        raise DataError(f"{where}: expected a string or a list of messages, got {type(value)}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "content" not in m:
            raise DataError(f"{where}[{i}]: a message needs 'role' and 'content'")
        role = str(m.get("role", default_role))
        if role not in MESSAGE_ROLES:
            raise DataError(f"{where}[{i}].role: {role!r} is not one of {', '.join(MESSAGE_ROLES)}")
        out.append({"role": role, "content": str(m["content"])})
    return out


def to_conversation(
    prompt: Any, response: Any, where: str = "response", prompt_where: str = "prompt"
) -> Conversation:
    """Prompt (string or messages, or None) + response (string or messages) -> one
    conversation whose last message is the assistant response. ``where`` / ``prompt_where``
    name the response and the prompt in errors."""
    head = [] if prompt is None else as_messages(prompt, "user", prompt_where)
    tail = as_messages(response, "assistant", where)
    if not tail:
        raise DataError(f"{where}: empty")
    if tail[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's")
    return head + tail


def check_conversation(messages: Sequence[dict[str, str]], where: str) -> Conversation:
    conv = as_messages(list(messages), "user", where)
    if not conv:
        raise DataError(f"{where}: a conversation needs at least the assistant response")
    return check_messages(conv, where)


def parse_prompt_text(prompt: str) -> list[dict[str, str]]:
    """Messages of a chat-templated prompt string (ChatML or Llama-3), else one user message.

    An open assistant turn at the end (the generation header) is dropped.
    """
    return _template_messages(prompt) or [{"role": "user", "content": prompt}]


def _template_messages(text: str) -> list[dict[str, str]]:
    """The turns of a ChatML or Llama-3 rendering (an empty assistant turn at the end
    dropped); [] when ``text`` is neither. Text before the first turn is left out. A turn's
    content is kept verbatim: only the template's own separators (the newline after a
    ChatML role, the blank line after a Llama-3 header) are not part of it."""
    for pattern in (_CHATML, _LLAMA3):
        found = pattern.findall(text)
        if found:
            msgs = [{"role": r, "content": c} for r, c in found]
            if msgs and msgs[-1]["role"] == "assistant" and not msgs[-1]["content"].strip():
                msgs.pop()
            if msgs:
                return msgs
    return []


def strip_suffixes(text: str, suffixes: Sequence[str]) -> str:
    """``text`` less the end-of-turn / padding tokens at its end and the whitespace around
    and between them (``"mango.\n<|im_end|>\n<pad>"`` -> ``"mango.\n"``): what the
    template added after the response. The response's own whitespace, before the first such
    token, is kept (the one whitespace rule: texts are scored as given, as at fit time)."""
    out = text
    while suffixes:
        bare = out.rstrip()
        token = next((s for s in suffixes if s and bare.endswith(s)), None)
        if token is None:
            break
        out = bare[: -len(token)]
    return out


def read_query(
    query: str,
    prompt: str | None,
    *,
    suffixes: Sequence[str] = DEFAULT_STRIP_SUFFIXES,
    parse_templates: bool = True,
) -> tuple[Conversation, bool]:
    """An OpenRLHF ``query`` (prompt + response) and its ``prompt`` -> ``(conversation,
    matched)``; never fails.

    Without a prompt the whole query is scored as the response to an empty prompt.
    ``matched`` is False when the query does not start with its prompt (OpenRLHF truncated
    the prompt); the conversation is then :func:`query_conversation` of the query alone."""
    if prompt is None:
        prompt_msgs: list[dict[str, str]] = []
        response = query
    elif not query.startswith(prompt):
        return query_conversation(query, suffixes=suffixes, parse_templates=parse_templates), False
    else:
        response = query[len(prompt) :]
        prompt_msgs = (
            parse_prompt_text(prompt) if parse_templates else [{"role": "user", "content": prompt}]
        )
    response = strip_suffixes(response, suffixes)
    return prompt_msgs + [{"role": "assistant", "content": response}], True


def query_conversation(
    query: str,
    *,
    suffixes: Sequence[str] = DEFAULT_STRIP_SUFFIXES,
    parse_templates: bool = True,
) -> Conversation:
    """A whole query (prompt + response) read without its prompt string.

    A ChatML or Llama-3 rendering gives its turns, the last assistant turn being the
    response (an empty one is added when the query ends on another role); any other string
    is the response to an empty prompt, as when no prompt is given."""
    text = strip_suffixes(query, suffixes)
    msgs = _template_messages(text) if parse_templates else []
    if not msgs:
        return [{"role": "assistant", "content": text}]
    if msgs[-1]["role"] != "assistant":
        msgs.append({"role": "assistant", "content": ""})
    msgs[-1]["content"] = strip_suffixes(msgs[-1]["content"], suffixes)
    return msgs

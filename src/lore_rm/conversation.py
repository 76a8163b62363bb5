"""The conversation type every layer shares (datasets, backbones, serving), and its check."""

from __future__ import annotations

from typing import Any

from lore_rm.errors import DataError

# A conversation: the prompt messages followed by the assistant response being scored,
# each a {"role": "system" | "user" | "assistant", "content": str} mapping.
Conversation = list[dict[str, str]]

MESSAGE_ROLES = ("system", "user", "assistant")


def message_problem(message: Any) -> str | None:
    """What is wrong with one message (``"is not an object"``, ...), or None when it is fine."""
    if not isinstance(message, dict):
        return "is not an object"
    role = message.get("role")
    if role not in MESSAGE_ROLES:
        return f"has role {role!r} (expected one of {', '.join(MESSAGE_ROLES)})"
    if not isinstance(message.get("content"), str):
        return "has no string 'content'"
    return None


def check_conversation(conversation: Any, where: str = "conversation") -> Conversation:
    """``conversation`` itself when it is a non-empty list of well-formed messages ending with
    the assistant response being scored; a :class:`DataError` naming ``where`` otherwise."""
    if not isinstance(conversation, list) or not conversation:
        raise DataError(
            f"{where}: a conversation must be a non-empty list of messages, got {conversation!r}"
        )
    for i, m in enumerate(conversation):
        problem = message_problem(m)
        if problem is not None:
            raise DataError(f"{where}[{i}] {problem}")
    if conversation[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant response being scored")
    return conversation

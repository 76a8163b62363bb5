"""The conversation type every layer shares (datasets, backbones, serving)."""

from __future__ import annotations

# A conversation: the prompt messages followed by the assistant response being scored,
# each a {"role": "system" | "user" | "assistant", "content": str} mapping.
Conversation = list[dict[str, str]]

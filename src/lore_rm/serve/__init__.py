"""Using a personalised reward model: HTTP service, onboarding, TRL and verl reward functions.

The web parts need the ``serve`` extra (FastAPI, uvicorn); the TRL and verl functions
and the service core do not, so they import without it.
"""

from __future__ import annotations

from typing import Any

from lore_rm.serve.async_rewards import make_async_remote_reward_func, make_async_reward_func
from lore_rm.serve.batching import Batching
from lore_rm.serve.integrations import make_remote_reward_func, make_reward_func
from lore_rm.serve.service import RewardService, default_db_path
from lore_rm.serve.verl import make_verl_reward

__all__ = [
    "Batching",
    "Limits",
    "QueryFormat",
    "RewardService",
    "create_app",
    "default_db_path",
    "make_async_remote_reward_func",
    "make_async_reward_func",
    "make_remote_reward_func",
    "make_reward_func",
    "make_verl_reward",
]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "Limits", "QueryFormat"):
        from lore_rm.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'lore_rm.serve' has no attribute {name!r}")

"""Request and response bodies of ranking, group choice and users' data routes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lore_rm.ranking import LEVEL
from lore_rm.serve.schemas import Messages, Text, UserId

Turns = Text | Messages  # a string (one message) or a list of messages
Responses = Annotated[list[Turns], Field(min_length=1, fail_fast=True)]
Level = Annotated[float, Field(gt=0.0, lt=1.0, description="the intervals' probability")]


class RankItem(BaseModel):
    """One prompt's candidates for one user."""

    model_config = ConfigDict(extra="forbid")
    user: UserId | None = Field(None, description="the user (default: the request's 'user')")
    prompt: Turns = Field(description="a user message, or the prompt messages")
    responses: Responses = Field(description="the candidates: strings or assistant messages")


class RankRequest(BaseModel):
    """Either one prompt (``prompt`` + ``responses``) or several (``items``)."""

    model_config = ConfigDict(extra="forbid")
    user: UserId | None = Field(
        None, description="whose reward ranks the candidates (none: the population's)"
    )
    prompt: Turns | None = None
    responses: Responses | None = None
    items: Annotated[list[RankItem], Field(min_length=1, fail_fast=True)] | None = Field(
        None, description="the batch form: one entry per prompt"
    )
    level: Level = LEVEL


class RankResult(BaseModel):
    user: str | None
    known: bool = Field(description="false: the user has no weights; the population's ranked")
    rewards: list[float] = Field(description="in the order posted; equal to /reward's")
    ranking: list[int] = Field(description="candidate indices, best first")
    best: int
    lower: list[float] | None = Field(description="each reward's interval (null: no posterior)")
    upper: list[float] | None
    uncertain: bool | None = Field(description="the two best candidates' intervals overlap")
    level: float


class RankBatchResult(BaseModel):
    results: list[RankResult]


class GroupRankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    users: Annotated[list[UserId], Field(min_length=1, fail_fast=True)]
    prompt: Turns
    responses: Responses
    rule: Literal["borda", "plurality", "copeland"] = "borda"


class GroupMember(BaseModel):
    user: str
    known: bool
    rewards: list[float]
    ranking: list[list[int]] = Field(description="tiers of candidate indices, best first")


class GroupAggregate(BaseModel):
    scores: list[float]
    ranking: list[list[int]] = Field(description="tiers of candidate indices, best first")
    winners: list[int] = Field(description="the first tier")


class GroupRankResponse(BaseModel):
    rule: str
    n_unknown: int
    users: list[GroupMember]
    aggregate: GroupAggregate


class Deletion(BaseModel):
    user: str
    deleted: bool
    was: Literal["onboarded", "model", "population-mean"] = Field(
        description="where the served weights came from before the deletion"
    )
    comparisons: int = Field(description="stored comparisons removed")
    weights: bool = Field(description="a stored weights row was removed")
    idempotency_keys: int
    scrubbed: bool = Field(
        description="the database's write-ahead log was checkpointed and truncated"
    )


class StoredItem(BaseModel):
    id: int
    prompt: list[dict[str, str]]
    chosen: list[dict[str, str]]
    rejected: list[dict[str, str]]
    created_at: float
    x: list[float] | None = None


class UserData(BaseModel):
    user: str
    known: bool
    source: str
    weights: list[float]
    served_weights: list[float]
    personalization: float
    personalization_chosen: float | None = Field(
        description="the personalisation strength the user set (null: the model's)"
    )
    personalizes: bool
    n_comparisons: int
    n_fit: int | None
    posterior: dict[str, Any] | None
    offset: int
    limit: int
    comparisons: list[StoredItem]
    idempotency_keys: list[dict[str, Any]]


class UserListItem(BaseModel):
    user: str
    source: Literal["onboarded", "model"]
    n_comparisons: int


class UserList(BaseModel):
    total: int
    offset: int
    limit: int
    next_offset: int | None
    users: list[UserListItem]

"""The service's request and response bodies (pydantic), and its limits and query format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Header
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from lore_rm.serve.formats import DEFAULT_STRIP_SUFFIXES, lone_surrogate


@dataclass(frozen=True)
class Limits:
    """Request limits. Bodies over ``max_body_bytes`` get 413; lists over the others get 413
    with the field named."""

    max_body_bytes: int = 16 * 1024 * 1024
    max_batch: int = 512  # conversations (or queries) per reward request
    max_comparisons: int = 1024  # comparisons per onboarding request
    max_candidates: int = 256  # candidate pairs per next-questions request
    max_user_id_chars: int = 256
    # characters per text (a message, a query or a prompt): a longer one is a 422. The
    # backbone reads at most its max_length tokens of any text, and cuts a long one to its
    # end before tokenising, so this bounds the request's parsing, not the model's work.
    max_text_chars: int = 1024 * 1024
    # JSON keys and list items per body, counted as the ':' and ',' outside strings (a key
    # counts ~2, a list item 1): bounds the cost of parsing a body, refused before it is
    # parsed. 1,024 comparisons with 40-message prompts hold ~200k.
    max_json_items: int = 400_000


@dataclass(frozen=True)
class QueryFormat:
    """How ``/get_reward`` turns OpenRLHF's strings into conversations."""

    strip_suffixes: tuple[str, ...] = DEFAULT_STRIP_SUFFIXES
    parse_templates: bool = True  # ChatML / Llama-3 prompt strings -> messages
    label_key: str | None = None  # labels are JSON objects; the user id is this key


# ---- checked types -----------------------------------------------------------------------------
N_SHOWN = 5  # bad items named in one error; the rest are counted


def _valid_unicode(text: str) -> str:
    problem = lone_surrogate(text)
    if problem is not None:
        raise ValueError(problem)
    return text


def _strings_only(allow_none: bool):
    """A before-check of a list of strings: one error naming the first few items that are not
    strings and counting them, before any per-item validation (a list of a million numbers
    then costs one pass, not a million errors)."""

    def check(value: Any) -> Any:
        if not isinstance(value, list):
            return value  # pydantic names the wrong type
        bad = [
            i for i, v in enumerate(value) if not (isinstance(v, str) or (allow_none and v is None))
        ]
        if bad:
            shown = ", ".join(
                f"[{i}] {type(value[i]).__name__}"
                + (f" {value[i]!r}" if isinstance(value[i], float) else "")
                for i in bad[:N_SHOWN]
            )
            more = f" and {len(bad) - N_SHOWN} more" if len(bad) > N_SHOWN else ""
            kind = "strings (or null)" if allow_none else "strings"
            raise ValueError(f"{len(bad)} of {len(value)} items are not {kind}: {shown}{more}")
        return value

    return check


# text: valid Unicode (a lone surrogate such as "\ud800" cannot be embedded or stored)
Text = Annotated[str, AfterValidator(_valid_unicode)]
Strings = Annotated[list[Text], BeforeValidator(_strings_only(False))]

# ---- schemas ----------------------------------------------------------------------------------
UserId = Annotated[Text, Field(min_length=1, max_length=256, examples=["alice"])]
# printable ASCII, no spaces: what a client-made UUID or random token looks like
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[!-~]+$",
        description="Optional: a retry with the same key and body stores nothing and returns "
        "the first response (header Idempotent-Replayed: true); another body under a used key "
        "is refused with 422.",
    ),
]


class Closed(BaseModel):
    """A body object with a fixed set of keys. Unknown keys are refused in one pass, in one
    error naming the first few and counting them, before any per-key work (pydantic's own
    ``extra="forbid"`` makes one error per key: a million keys took seconds of the event
    loop); ``extra="forbid"`` stays for the OpenAPI description."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_keys(cls, value: Any) -> Any:
        fields = cls.model_fields
        if isinstance(value, dict) and not fields.keys() >= value.keys():
            unknown = [k for k in value if k not in fields]
            shown = ", ".join(repr(str(k)[:50]) for k in unknown[:N_SHOWN])
            more = f" and {len(unknown) - N_SHOWN} more" if len(unknown) > N_SHOWN else ""
            known = ", ".join(fields)
            raise ValueError(
                f"{len(unknown)} unknown key(s): {shown}{more} (this object takes {known})"
            )
        return value


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: Text


# a bad message in a long list is reported once, not once per message
Messages = Annotated[list[Message], Field(fail_fast=True)]


Strength = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class GetRewardRequest(BaseModel):
    """OpenRLHF's remote reward-model request (extra fields are accepted and ignored)."""

    model_config = ConfigDict(extra="ignore")
    query: Strings = Field(description="prompt + response strings, as the policy rendered them")
    prompts: Strings | None = Field(
        None, description="the prompt of each query; the response is query[len(prompt):]"
    )
    labels: list[Any] | None = Field(
        None, description="the user id of each sample (OpenRLHF's --data.label_key column)"
    )


class GetRewardResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]


class RewardRequest(Closed):
    user: Text | None = Field(None, description="one user id for every conversation")
    users: Annotated[list[Text | None], BeforeValidator(_strings_only(True))] | None = Field(
        None, description="or one user id per conversation"
    )
    conversations: Annotated[list[Messages], Field(fail_fast=True)] = Field(
        min_length=1,
        description="each: the prompt messages then the assistant response being scored",
    )
    personalization: Strength | None = Field(
        None,
        description="this call's personalisation strength for every user, in [0, 1] (0: the "
        "shared reward; 1: each user's own weights); default: the strength each user chose, "
        "else the model's",
    )


class PersonalizationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    personalization: Strength | None = Field(
        description="in [0, 1]: 0 opts out (the shared reward), 1 uses the user's own weights; "
        "null: back to the model's strength"
    )


class RewardResponse(BaseModel):
    rewards: list[float]
    users: list[str | None]
    known: list[bool] = Field(
        description="false: the user has no weights; the population's mean weights were used"
    )
    n_unknown: int


class _PairIn(Closed):
    """A prompt and two responses (the subclasses name the responses)."""

    prompt: Text | Messages = Field(description="a user message, or the prompt messages")


class ComparisonIn(_PairIn):
    chosen: Text | Messages = Field(description="the preferred response")
    rejected: Text | Messages = Field(description="the other response")


class OnboardRequest(Closed):
    comparisons: Annotated[list[ComparisonIn], Field(fail_fast=True)] = Field(min_length=1)


class OnboardResponse(BaseModel):
    user: str
    new_user: bool
    added: int
    total: int
    n_fit: int
    weights: list[float]


class CandidateIn(_PairIn):
    response_a: Text | Messages = Field(description="one response")
    response_b: Text | Messages = Field(description="the other response (order is irrelevant)")


class NextQuestionsRequest(Closed):
    candidates: Annotated[list[CandidateIn], Field(fail_fast=True)] = Field(
        min_length=1, description="unlabelled pairs to choose from"
    )
    n: int = Field(3, ge=1, strict=True, description="how many to choose (at most the pool)")


class Question(BaseModel):
    index: int = Field(description="the candidate's position in the request")
    prompt: str | list[Message]
    response_a: str | list[Message]
    response_b: str | list[Message]
    information_gain: float = Field(
        description="expected information about the user's logits, in nats, given the "
        "questions before it in this list"
    )


class NextQuestionsResponse(BaseModel):
    user: str
    known: bool
    n_answers: int = Field(
        description="stored comparisons the posterior conditions on (0: the prior's covariance)"
    )
    prior: Literal["learned", "isotropic"]
    reason: str | None = Field(
        None,
        description="why no question is asked although candidates were given: the model (or "
        "this user, at strength 0) does not personalise, so no answer could change a reward",
    )
    questions: list[Question]


class PosteriorInfo(BaseModel):
    weights: list[float] = Field(description="the posterior's centre: the served weights")
    weights_std: list[float] = Field(
        description="delta-method std of each weight under the Laplace logit covariance"
    )
    n_answers: int = Field(description="stored comparisons the posterior conditions on")
    prior: Literal["learned", "isotropic"]


class UserInfo(BaseModel):
    user: str
    known: bool
    source: Literal["onboarded", "model", "population-mean"]
    weights: list[float] = Field(description="the user's own weights (strength 1)")
    served_weights: list[float] = Field(
        description="the weights their rewards use: the shared weights moved toward their own "
        "by their strength"
    )
    personalization: float = Field(description="the strength their rewards use")
    personalization_chosen: float | None = Field(
        description="the strength the user set (PUT /users/{id}/personalization); null: the model's"
    )
    personalizes: bool = Field(
        description="whether this user's rewards differ from the shared reward"
    )
    n_comparisons: int
    n_fit: int | None
    posterior: PosteriorInfo | None = Field(
        description="null for a user of the model folder with no stored comparisons (the "
        "training data behind their weights is not kept) or a model without a few-shot prior"
    )


class ModelInfo(BaseModel):
    format: str
    rank: int
    n_components: int
    d: int
    scale: float
    margin_scale: float = Field(
        description="the cross-validated calibration every served reward is multiplied by"
    )
    recipe: str
    backbone: str | None
    embedder: str
    has_reference_head: bool
    n_model_users: int
    n_onboarded_users: int
    n_stored_comparisons: int
    population_weights: list[float]
    model_fingerprint: str
    weights: Literal["simplex", "signed"] = Field(description="the users' weight space")
    personalization: float = Field(
        description="the model's personalisation strength (chosen by the fit's cross-validation)"
    )
    personalizes: bool = Field(description="whether users can get different rewards at all")
    why: str = Field(description="why the model does not personalise (empty when it does)")
    limits: dict[str, int]
    batching: dict[str, int | float] = Field(
        description="micro-batching: max_texts per backbone forward, max_wait_ms"
    )
    auth: bool


class Health(BaseModel):
    status: Literal["ok"]

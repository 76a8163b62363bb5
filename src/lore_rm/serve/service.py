"""The serving core, free of any web framework: score, onboard, persist.

:class:`RewardService` wraps a fitted :class:`~lore_rm.fit.model.LowRankReward`, an
:class:`~lore_rm.embed.base.Embedder` and a :class:`~lore_rm.serve.user_store.Store`:

* start-up loads every weight row of the database over the model's own users (a restart
  serves exactly the weights it had) and refits users whose stored comparisons outnumber
  the comparisons their weights were fitted on (a crash between the two transactions);
* :meth:`RewardService.reward` embeds conversations and scores them for their users; users
  the model and the database do not know get the population's mean weights, flagged;
* :meth:`RewardService.onboard` embeds posted comparisons, refits the user's weights with
  the basis frozen on *all* of that user's stored comparisons plus the new ones
  (:meth:`LowRankReward.fit_user_weights`), commits comparisons and weights (and an optional
  idempotency key) in one transaction, and only then serves the new weights: a failed write
  (:class:`~lore_rm.errors.StorageError`) stores nothing and changes nothing in memory;
* :meth:`RewardService.posterior` is the Laplace posterior of a user's logits around their
  served weights, from the stored comparisons those weights were fitted on (the prior for a
  user with none), and :meth:`RewardService.next_questions` picks the candidate pairs that
  would tell the most about that user (:meth:`LowRankReward.select_questions`);
* every call first picks up weights other server processes wrote (``users.seq``).
"""

from __future__ import annotations

import hashlib
import json
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from lore_rm.comparisons import Comparisons
from lore_rm.constants import DB_FILE
from lore_rm.conversation import Conversation
from lore_rm.embed.backbones import backbone_identity
from lore_rm.embed.base import Embedder
from lore_rm.errors import DataError, LoreError, ModelFormatError
from lore_rm.fit.model import LaplacePosterior, LowRankReward
from lore_rm.fit.personalizes import does_not_personalize
from lore_rm.serve.batching import MicroBatcher, ShuttingDown, text_cost
from lore_rm.serve.strengths import Strengths
from lore_rm.serve.user_records import changes_since, user_sha256
from lore_rm.serve.user_store import FifoLock, Idempotency, Store, StoredComparison


def default_db_path(model_dir: str | Path) -> Path:
    """The database file next to the model folder: ``MODEL_DIR/lore-serve.sqlite``."""
    return Path(model_dir) / DB_FILE


def model_fingerprint(model: LowRankReward) -> str:
    """A hash of what user weights are defined over: the basis and the scale the fits use
    (``scale_``; the margin scale changes outputs only, not what a user's weights mean)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(model.basis_.to(torch.float32).numpy()).tobytes())
    h.update(repr((float(model.scale_), tuple(model.basis_.shape))).encode())
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class Scored:
    rewards: np.ndarray  # (M,) float64
    known: np.ndarray  # (M,) bool: the user had weights (model or database)
    # (M, K) float32: each embedding projected on the basis, e @ V (for intervals, group rewards)
    projections: np.ndarray | None = None

    def rows(self, start: int, end: int) -> Scored:
        """The rows ``start:end`` (one request's share of a micro-batch)."""
        y = None if self.projections is None else self.projections[start:end]
        return Scored(self.rewards[start:end], self.known[start:end], y)


@dataclass(frozen=True)
class Onboarded:
    user: str
    new_user: bool  # no weights (model or database) before this request
    added: int
    total: int  # the user's stored comparisons after this request
    n_fit: int  # comparisons the served weights were fitted on
    weights: list[float]
    replayed: bool = False  # an idempotency key's stored response: nothing was stored now


def body_sha256(raw: Sequence[StoredComparison]) -> str:
    """A hash of an onboarding post's comparisons (as parsed: equal bodies, equal hashes)."""
    text = json.dumps([asdict(c) for c in raw], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Posterior:
    """A user's posterior as reported: the served weights, the delta-method std of each weight
    under the Laplace logit covariance, the answers (stored comparisons) it conditions on and
    the kind of prior it starts from."""

    weights: list[float]
    weights_std: list[float]
    n_answers: int
    prior: str


@dataclass(frozen=True)
class Questions:
    """Chosen candidates (row indices, in asking order) and their expected information gain
    (nats), for a user whose posterior conditions on ``n_answers`` stored comparisons (0: the
    prior's covariance, around the served weights)."""

    rows: list[int]
    gains: list[float]
    known: bool
    n_answers: int
    prior: str
    reason: str | None = None  # why nothing is asked: no answer could change a reward


#: the most recent comparisons of a user that their fit and posterior use (all are stored)
DEFAULT_HISTORY = 1024
#: posteriors kept in memory (one K x K matrix each), least recently used dropped first
POSTERIORS_KEPT = 4096


class NoPosterior(LoreError):
    """The served model has no posterior to offer (it was fitted without a few-shot prior)."""


class RewardService:
    """Thread-safe scoring and onboarding over one model, one embedder and one database
    (``db_timeout_s``: how long a write waits for a database another process holds)."""

    def __init__(
        self,
        model: LowRankReward,
        embedder: Embedder,
        db_path: str | Path,
        *,
        serialize_embed: bool = True,
        refit_stale: bool = True,
        warm_up: bool = True,
        db_timeout_s: float = 60.0,
        history: int | None = DEFAULT_HISTORY,
    ) -> None:
        if not model.is_fitted:
            raise ModelFormatError("the service needs a fitted model")
        if history is not None and history < 1:
            raise LoreError(f"history must be at least 1 comparison (or None: all), got {history}")
        self.history = history
        if int(embedder.dim) != int(model.d_):
            raise ModelFormatError(
                f"the embedder {embedder.name!r} gives d = {embedder.dim} but the model was "
                f"fitted on d = {model.d_}"
            )
        self.model = model.copy()  # the caller's object is never mutated
        self.embedder = embedder
        self.db_path = Path(db_path)
        self.store = Store(self.db_path, timeout_s=db_timeout_s)
        self.strengths = Strengths(self.store)
        self.store.bind(
            {
                "model_fingerprint": model_fingerprint(model),
                "embedder": self._embedder_binding(embedder),
                "d": str(model.d_),
            }
        )
        self._lock = threading.RLock()  # guards self.model's weights and the maps below
        self._embed_lock = threading.Lock() if serialize_embed else None
        self._queue: MicroBatcher | None = None
        self._personalize_lock = FifoLock()
        self._seq = 0
        self._n_fit: dict[str, int] = {}  # onboarded users -> comparisons behind their weights
        self._model_users = set(self.model.users_)  # less the ones deleted since
        self._model_user_hashes: dict[str, str] | None = None  # id hash -> model user
        self._folder = model  # the folder's own weights, for users whose rows are all gone
        self._forgotten: set[str] = set()  # onboarded, not in the folder, no rows left
        # (user -> (n_fit, posterior)) of the served weights: a GET reads no rows twice
        self._posteriors: OrderedDict[str, tuple[int, LaplacePosterior]] = OrderedDict()
        self.sync()
        if warm_up:
            self._warm_up()
        if refit_stale:
            for user in self.store.stale_users():
                self._refit(user)

    def _embedder_binding(self, embedder: Embedder) -> str:
        """What the database records of the backbone: its content fingerprint when it has
        one (a moved or copied checkpoint is the same backbone), else its name. A database
        bound by name before fingerprints were recorded keeps that binding."""
        name = str(embedder.name)
        if self.store.get_meta("embedder") == name:
            return name
        fingerprint = backbone_identity(embedder).get("fingerprint")
        return str(fingerprint) if fingerprint else name

    # ---- weights ------------------------------------------------------------------------------
    def _apply(
        self,
        users: Sequence[str],
        weights: np.ndarray,
        n_fit: Sequence[int],
        *,
        newest: bool = False,
    ) -> None:
        """Install weights in memory, keeping for each user the fit over the most comparisons
        (``newest``: the database's current rows, whatever they replace)."""
        with self._lock:
            keep = [
                i
                for i, (u, n) in enumerate(zip(users, n_fit, strict=True))
                if newest or n >= self._n_fit.get(u, -1)
            ]
            if not keep:
                return
            ids = [users[i] for i in keep]
            w = torch.from_numpy(np.asarray(weights, dtype=np.float32)[keep])
            if w.shape[1] != self.model.n_components_:
                raise ModelFormatError(
                    f"{self.db_path}: stored weights have {w.shape[1]} components but the model "
                    f"has {self.model.n_components_}"
                )
            self.model.set_user_weights(ids, w)
            for i in keep:
                self._n_fit[users[i]] = int(n_fit[i])
                self._forgotten.discard(users[i])
                self._posteriors.pop(users[i], None)

    def _forget(self, user: str) -> None:
        """``user`` has no stored comparisons left: serve the folder's weights (a seen user)
        or the population's (anyone else), as before they were onboarded."""
        with self._lock:
            self._n_fit.pop(user, None)
            self._posteriors.pop(user, None)
            if user in self._model_users:
                w, _ = self._folder.weights_for([user])
                self.model.set_user_weights([user], w)
            elif user in self.model.user_table_:
                self._forgotten.add(user)

    def forget(self, ids: Sequence[str]) -> None:
        """Stop serving ``ids``' weights (deleted users): they are unknown from now on, in
        this process, whatever the model folder holds."""
        with self._lock:
            self.model.drop_users(ids)
            for user in ids:
                self._n_fit.pop(user, None)
                self._model_users.discard(user)

    def forget_hashes(self, hashes: Iterable[str]) -> None:
        """:meth:`forget` the users whose id hashes are ``hashes`` (deletions another process
        made)."""
        wanted = set(hashes)
        if not wanted:
            return
        with self._lock:
            table = self._model_user_hashes
            if table is None:  # hashed once, at the first deletion this process sees
                table = self._model_user_hashes = {user_sha256(u): u for u in self._model_users}
            ids = [table[h] for h in wanted if h in table]
            ids += [u for u in self._n_fit if user_sha256(u) in wanted]
        self.forget(ids)

    def _served_ids(self, users: Sequence[str | None]) -> list[str | None]:
        """``users`` as the model is asked about them (forgotten users as unknown)."""
        if not self._forgotten:
            return [None if u is None else str(u) for u in users]
        return [None if u is None or u in self._forgotten else str(u) for u in users]

    def sync(self) -> int:
        """Pick up deletions and weights written to the database since the last look (by any
        process): deleted users are dropped first, then each user's current row installed,
        whatever it replaces (a refit after rows were deleted has fewer comparisons than the
        fit before it).

        Returns how many users were read."""
        changes = changes_since(self.store, self._seq)
        if changes.newest <= self._seq:
            return 0
        with self._lock:
            if changes.newest <= self._seq:
                return 0
            self.forget_hashes(changes.deleted)
            if changes.users:
                assert changes.weights is not None
                self._apply(changes.users, changes.weights, changes.n_fit, newest=True)
            self._seq = changes.newest
        return len(changes.users) + len(changes.deleted)

    def _warm_up(self) -> None:
        """Run the backbone and the few-shot fit once: their first calls pay one-off costs
        (lazy imports, kernel selection; ~2 s for the fit on a CPU) that would otherwise land
        on the first request."""
        e = self.embed(
            [[{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hello"}]]
        )
        x = torch.cat([e, -e]).numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.fit_user_weights(Comparisons.from_features(x, ["warm-up"] * 2))

    def _fit(self, user: str, x: np.ndarray) -> np.ndarray:
        """``user``'s weights fitted on features ``x`` (n, d) -- the last ``history`` rows of
        them -- with the basis frozen."""
        if self.history is not None:
            x = x[-self.history :]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # a pure fit on the frozen basis: the served weights change only through _apply()
            _, weights = self.model.fit_user_weights(
                Comparisons.from_features(x, [user] * int(x.shape[0])), users=[user]
            )
        return weights[0].numpy().astype(np.float32)

    def _refit(self, user: str) -> None:
        """Refit ``user`` on the comparisons stored now and serve that, whatever it replaces
        (no comparisons left: forget their onboarding)."""
        with self._personalize_lock:
            fit = lambda x: self._fit(user, x)  # noqa: E731
            w, n = self.store.refit(user, self.model.d_, fit, window=self.history)
            if w is None:
                self._forget(user)
            else:
                self._apply([user], w[None, :], [n], newest=True)

    # ---- embedding ----------------------------------------------------------------------------
    def use_queue(self, queue: MicroBatcher | None) -> None:
        """Send every backbone call through ``queue`` (chunked, small requests first: see
        :mod:`~lore_rm.serve.batching`); None: call the backbone directly."""
        self._queue = queue

    def text_cost(self, conversation: Conversation) -> int:
        """What embedding ``conversation`` costs, for the queue's chunks: its characters, up
        to where the backbone stops reading (~4 per token of its ``max_length``)."""
        max_length = getattr(self.embedder, "max_length", None)
        return text_cost(conversation, 4 * max_length if isinstance(max_length, int) else None)

    def embed(self, conversations: Sequence[Conversation]) -> torch.Tensor:
        """(n, d) float32 embeddings: through the queue when one is in use (and running)."""
        queue = self._queue
        if queue is not None and queue.thread is not threading.current_thread():
            try:
                future = queue.submit(conversations)
            except ShuttingDown:
                pass  # the app is stopping: what is still in flight runs directly
            else:
                return future.result()
        return self.embed_now(conversations)

    def embed_now(self, conversations: Sequence[Conversation]) -> torch.Tensor:
        """The backbone's embeddings of ``conversations``, checked (one call at a time)."""
        if self._embed_lock is None:
            e = self.embedder.embed(conversations)
        else:
            with self._embed_lock:
                e = self.embedder.embed(conversations)
        e = torch.as_tensor(e, dtype=torch.float32)
        if e.shape != (len(conversations), self.model.d_):
            raise DataError(
                f"the embedder returned shape {tuple(e.shape)} for {len(conversations)} "
                f"conversations (expected d = {self.model.d_})"
            )
        if not torch.isfinite(e).all():
            bad = int((~torch.isfinite(e).all(dim=1)).nonzero()[0])
            raise DataError(f"the embedding of conversation {bad} holds NaN or inf")
        return e

    # ---- public API ---------------------------------------------------------------------------
    def reward(
        self,
        conversations: Sequence[Conversation],
        users: Sequence[str | None],
        personalization: float | None = None,
    ) -> Scored:
        """Personalised reward of each conversation for its user.

        Users with no weights (and ``None``) get the population's mean weights, flagged in
        ``known``. ``personalization`` (in [0, 1]) overrides every user's strength for this
        call (see :meth:`score`)."""
        if len(users) != len(conversations):
            raise DataError(f"{len(users)} users for {len(conversations)} conversations")
        if not conversations:
            k = self.model.n_components_
            return Scored(np.zeros(0), np.zeros(0, dtype=bool), np.zeros((0, k), np.float32))
        return self.score(self.embed(conversations), users, personalization)

    def strengths_of(
        self, users: Sequence[str | None], personalization: float | None = None
    ) -> list[float | None]:
        """Each user's personalisation strength for a call: ``personalization`` when given,
        else the one the user chose (``PUT /users/{id}/personalization``), else None (the
        model's own)."""
        if personalization is not None:
            return [float(personalization)] * len(users)
        return self.strengths.of(users)

    def score(
        self, e: torch.Tensor, users: Sequence[str | None], personalization: float | None = None
    ) -> Scored:
        """The rewards of embeddings ``e`` (n, d) for ``users`` (see :meth:`reward`), and
        the embeddings' projections on the basis. Each user's weights are moved toward the
        shared ones by their strength (:meth:`strengths_of`)."""
        if len(users) != e.shape[0]:
            raise DataError(f"{len(users)} users for {e.shape[0]} embeddings")
        self.sync()
        if not len(users):
            k = self.model.n_components_
            return Scored(np.zeros(0), np.zeros(0, dtype=bool), np.zeros((0, k), np.float32))
        lam = self.strengths_of(users, personalization)
        with self._lock:
            ids = self._served_ids(users)
            r, known = self.model.reward(
                e, ids, unknown="mean", personalization=lam, return_known=True
            )
        y = (e @ self.model.basis_).numpy()
        return Scored(r.double().numpy(), known.numpy(), y)

    def onboard(
        self,
        user: str,
        comparisons: Sequence[tuple[Conversation, Conversation]],
        raw: Sequence[StoredComparison],
        *,
        idempotency_key: str | None = None,
    ) -> Onboarded:
        """Store ``comparisons`` ((chosen, rejected) conversations) for ``user`` and refit.

        ``raw`` holds what was posted (kept in the database next to the features). With
        ``idempotency_key``, a post whose key ``user`` already used returns the first post's
        result and stores nothing (another body under the key:
        :class:`~lore_rm.errors.IdempotencyKeyReused`). Comparisons, weights and key are
        committed together; the served weights change only after the commit."""
        if not comparisons:
            raise DataError("comparisons: at least one comparison is needed")
        if len(raw) != len(comparisons):
            raise DataError("raw must hold one entry per comparison")
        idem = None if idempotency_key is None else Idempotency(idempotency_key, body_sha256(raw))
        if idem is not None and (stored := self.store.replay(user, idem)) is not None:
            return Onboarded(**(stored | {"replayed": True}))
        self.sync()
        new_user = not self.is_known(user)
        n = len(comparisons)
        e = self.embed([c for c, _ in comparisons] + [r for _, r in comparisons])
        x = (e[:n] - e[n:]).numpy()

        def respond(total: int, w: np.ndarray) -> dict:
            weights = [float(v) for v in w.tolist()]
            return asdict(Onboarded(user, new_user, n, total, total, weights))

        with self._personalize_lock:
            # refits are GIL- and CPU-bound: one at a time per process
            n_before = self.store.count_comparisons(user)
            before = self.store.features_of(user, self.model.d_, upto=n_before, window=self.history)
            w = self._fit(user, np.concatenate([before, x]))
            done = self.store.add_and_fit(
                user, raw, x,
                fit=lambda features: self._fit(user, features),
                fitted=(n_before, w),
                respond=respond,
                idem=idem,
                window=self.history,
            )  # fmt: skip
        if done.replayed:  # the same key raced this request and won: its result stands
            return Onboarded(**(done.response | {"replayed": True}))
        self.sync()  # serve what was committed (or what another process committed since)
        return Onboarded(**done.response)

    def is_known(self, user: str) -> bool:
        with self._lock:
            return user in self._n_fit or user in self._model_users

    def user_info(self, user: str) -> dict:
        self.sync()
        posterior = self._posterior(user)  # first: it repairs a user whose rows are gone
        (chosen,) = self.strengths.of([user])
        with self._lock:
            ids = self._served_ids([user])
            w, known = self.model.weights_for(ids, unknown="mean", personalization=1.0)
            served, _ = self.model.weights_for(ids, unknown="mean", personalization=[chosen])
            onboarded = user in self._n_fit
            in_model = user in self._model_users
            n_fit = self._n_fit.get(user)
            strength = self.model.personalization_ if chosen is None else chosen
        return {
            "user": user,
            "known": bool(known[0]),
            "source": "onboarded" if onboarded else "model" if in_model else "population-mean",
            "weights": [float(v) for v in w[0].tolist()],
            "served_weights": [float(v) for v in served[0].tolist()],
            "personalization": float(strength),
            "personalization_chosen": chosen,
            "personalizes": bool(self.model.personalizes and strength > 0 and known[0]),
            "n_comparisons": self.store.count_comparisons(user),
            "n_fit": n_fit,
            "posterior": None if posterior is None else asdict(posterior),
        }

    # ---- uncertainty and questions ------------------------------------------------------------
    def _user_view(self, user: str) -> tuple[LowRankReward, int]:
        """The model knowing ``user``'s served weights alone (:meth:`LowRankReward.for_users`:
        the basis and the prior shared, read only), and how many stored comparisons they were
        fitted on: posteriors and selections run on it without holding the weights lock."""
        with self._lock:
            view = self.model.for_users(self._served_ids([user]))
            n_fit = self._n_fit.get(user, 0)
        return view, n_fit

    def _user_posterior(
        self, user: str, *, answers: bool = True
    ) -> tuple[LowRankReward, LaplacePosterior, Comparisons | None]:
        """``user``'s served weights (as a one-user model), their Laplace posterior from the
        stored comparisons those weights were fitted on (the last ``history`` of the first
        ``n_fit``: the table is append-only) or the prior's covariance when there are none,
        and those comparisons (when ``answers``). The posterior is kept until the user's
        weights change."""
        for _ in range(3):
            view, n_fit = self._user_view(user)
            if n_fit <= self.store.count_comparisons(user):
                break
            self.sync()  # weights synced in after the read: their rows are committed now
        else:  # fewer rows than the weights were fitted on: rows were deleted
            self._refit(user)
            view, n_fit = self._user_view(user)
            n_fit = min(n_fit, self.store.count_comparisons(user))
        with self._lock:
            kept = self._posteriors.get(user)
        if kept is not None and kept[0] == n_fit and not answers:
            return view, kept[1], None
        x = self.store.features_of(user, self.model.d_, upto=n_fit, window=self.history)
        rows = int(x.shape[0])
        asked = Comparisons.from_features(x, [user] * rows) if rows else None
        if kept is not None and kept[0] == n_fit:
            return view, kept[1], asked
        try:
            post = view.weights_posterior(asked, users=[user], unknown="mean")
        except LoreError as exc:
            msg = f"no posterior: {exc}; refit the model with a few-shot prior"
            raise NoPosterior(msg) from exc
        with self._lock:
            if n_fit and self._n_fit.get(user, 0) == n_fit:  # still the served weights
                self._posteriors[user] = (n_fit, post)
                self._posteriors.move_to_end(user)
                while len(self._posteriors) > POSTERIORS_KEPT:
                    self._posteriors.popitem(last=False)
        return view, post, asked

    def posterior(self, user: str) -> Posterior | None:
        """``user``'s posterior; None for a user of the model folder with no stored
        comparisons (their weights come from training data the folder does not keep) and
        for a model fitted without a few-shot prior."""
        self.sync()
        return self._posterior(user)

    def _posterior(self, user: str) -> Posterior | None:
        with self._lock:
            if user in self._model_users and user not in self._n_fit:
                return None
        prior = self.model.few_shot_prior().kind
        try:
            _, post, _ = self._user_posterior(user, answers=False)
        except NoPosterior:
            return None
        with self._lock:
            if user in self._model_users and user not in self._n_fit:
                return None  # their stored comparisons were all gone: the folder's weights
        return Posterior(
            [float(v) for v in post.weights[0].tolist()],
            [float(v) for v in post.weights_std()[0].tolist()],
            int(post.n_comparisons[0]),
            prior,
        )

    def next_questions(
        self, user: str, pairs: Sequence[tuple[Conversation, Conversation]], n: int
    ) -> Questions:
        """The ``n`` candidate pairs (two conversations each) most informative about
        ``user``, greedily (D-optimal, :mod:`lore_rm.fit.active`); near-duplicates of each
        other or of the user's stored comparisons are skipped, so fewer may come back.

        A user of the model folder without stored comparisons gets the prior's covariance
        around their fitted weights; an unknown user the prior around the population's."""
        if not 1 <= n <= len(pairs):
            raise DataError(f"n must be between 1 and the {len(pairs)} candidates, got {n}")
        self.sync()
        reason = self.no_questions_reason(user)
        if reason is not None:
            prior = self.model.few_shot_prior().kind if self.model.rank_ > 0 else "isotropic"
            return Questions([], [], self.is_known(user), 0, prior, reason)
        m = len(pairs)
        e = self.embed([a for a, _ in pairs] + [b for _, b in pairs])
        candidates = Comparisons.from_features(e[:m] - e[m:], [user] * m)
        view, post, answers = self._user_posterior(user)
        sel = post.select_questions(candidates, n, asked=answers)
        keep = sel.rows[0] >= 0
        return Questions(
            [int(r) for r in sel.rows[0][keep].tolist()],
            [float(g) for g in sel.scores[0][keep].tolist()],
            bool(view.users_),
            int(post.n_comparisons[0]),
            view.few_shot_prior().kind,
        )

    def no_questions_reason(self, user: str) -> str | None:
        """Why asking ``user`` anything is pointless (None when it is not): the model does not
        personalise, or the user's strength is 0."""
        why = does_not_personalize(self.model)
        if why is not None:
            return f"this model does not personalise ({why})"
        (chosen,) = self.strengths.of([user])
        if chosen == 0:
            return "this user's personalisation strength is 0 (opted out)"
        return None

    def info(self) -> dict:
        self.sync()
        m = self.model
        with self._lock:
            n_onboarded = len(self._n_fit)
            population = [float(v) for v in m.population_weights_.tolist()]
        return {
            "format": "lore-rm",
            "rank": int(m.rank_),
            "n_components": int(m.n_components_),
            "d": int(m.d_),
            "scale": float(m.scale_),
            "margin_scale": float(m.margin_scale_),
            "recipe": m.recipe,
            "backbone": m.backbone,
            "embedder": str(self.embedder.name),
            "has_reference_head": m.reference_head_ is not None,
            "n_model_users": len(self._model_users),
            "n_onboarded_users": n_onboarded,
            "n_stored_comparisons": self.store.count_comparisons(),
            "population_weights": population,
            "model_fingerprint": model_fingerprint(m),
            "weights": m.weight_space_,
            "personalization": float(m.personalization_),
            "personalizes": bool(m.personalizes),
            "why": does_not_personalize(m) or "",
        }

    def close(self) -> None:
        self.store.close()

"""Planted low-rank populations: known truth, so the best achievable accuracy is known."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from lore_rm.comparisons import Comparisons, DifferenceRows
from lore_rm.fit.solvers import bt_margins
from lore_rm.metrics import mean_accuracy
from lore_rm.protocol import ProtocolSplit

Tensor = torch.Tensor
#: bytes of difference rows formed at once for the planted utilities (two buffers of this)
PAIR_BLOCK_BYTES = 128 << 20


@dataclass(frozen=True)
class PopulationConfig:
    """Sizes and difficulty of a simulated population (every draw comes from ``seed``).

    Embeddings of ``n_prompts * responses_per_prompt`` texts are Gaussian with per-dimension
    scales spread over ``anisotropy`` orders of magnitude, times ``embedding_scale``, plus a
    shared offset (which differences cancel). The true reward of user u is
    ``beta * e @ V_true @ w_u`` with ``w_u ~ Dirichlet(dirichlet_alpha)``; ``beta`` is set so
    the true margins have standard deviation ``margin_scale``. Labels are drawn
    Bradley–Terry from the true margins. Test comparisons use held-out prompts.
    """

    d: int = 32
    true_rank: int = 4
    dirichlet_alpha: float = 0.3
    n_seen: int = 200
    n_unseen: int = 100
    train_per_user: int = 60
    test_per_user: int = 40
    fewshot_per_user: int = 20
    n_prompts: int = 1000
    responses_per_prompt: int = 4
    test_prompt_fraction: float = 0.2
    margin_scale: float = 3.0
    embedding_scale: float = 1.0
    anisotropy: float = 1.0
    reference_noise: float = 0.5
    seed: int = 0


@dataclass
class SimulatedPopulation:
    config: PopulationConfig
    split: ProtocolSplit
    true_basis: Tensor  # (d, r), already multiplied by beta
    true_weights: dict[str, Tensor]  # "seen" (n_seen, r) and "unseen" (n_unseen, r)
    oracle: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"population": asdict(self.config), "oracle": self.oracle}


def _pair_utilities(table: Tensor, a: Tensor, b: Tensor, basis: Tensor, w: Tensor) -> Tensor:
    """``(((table[a] - table[b]) @ basis) * w).sum(1)`` with the difference rows formed a
    block at a time: the same numbers as forming them all, in O(block x d) memory.

    Projecting the table first, ``(table @ basis)[a] - (table @ basis)[b]``, rounds
    differently and flipped 3 of 5.7M labels at 100k users; this keeps the populations of
    a seed what they were.
    """
    block = min(a.numel(), max(1, PAIR_BLOCK_BYTES // (4 * table.shape[1])))
    out = torch.empty(a.numel())
    rows = DifferenceRows(table, block)
    for start in range(0, a.numel(), block):
        stop = min(start + block, a.numel())
        x = rows(a[start:stop], b[start:stop])
        out[start:stop] = ((x @ basis) * w[start:stop]).sum(1)
    return out


def simulate_population(config: PopulationConfig | None = None, **overrides) -> SimulatedPopulation:
    cfg = config or PopulationConfig(**overrides)
    g = torch.Generator().manual_seed(cfg.seed)
    d, r = cfg.d, cfg.true_rank
    n_texts = cfg.n_prompts * cfg.responses_per_prompt

    dim_scale = 10.0 ** (cfg.anisotropy * (torch.rand(d, generator=g) - 0.5))
    offset = 3.0 * torch.randn(d, generator=g)
    table = (torch.randn(n_texts, d, generator=g) * dim_scale + offset) * cfg.embedding_scale

    basis = torch.randn(d, r, generator=g)
    dirichlet = torch.distributions.Dirichlet(torch.full((r,), cfg.dirichlet_alpha))
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed + 7)
        w_seen = dirichlet.sample((cfg.n_seen,))
        w_unseen = dirichlet.sample((cfg.n_unseen,))

    n_test_prompts = max(1, int(round(cfg.test_prompt_fraction * cfg.n_prompts)))
    prompt_perm = torch.randperm(cfg.n_prompts, generator=g)
    test_prompts, train_prompts = prompt_perm[:n_test_prompts], prompt_perm[n_test_prompts:]

    def pairs(n_users: int, per_user: int, prompts: Tensor):
        users = torch.arange(n_users).repeat_interleave(per_user)
        p = prompts[torch.randint(len(prompts), (users.numel(),), generator=g)]
        a = torch.randint(cfg.responses_per_prompt, (users.numel(),), generator=g)
        b = a + torch.randint(1, cfg.responses_per_prompt, a.shape, generator=g)
        b = b % cfg.responses_per_prompt
        base = p * cfg.responses_per_prompt
        return users, base + a, base + b

    # beta: true margins of std margin_scale over a sample of pairs
    u0, a0, b0 = pairs(cfg.n_seen, 10, train_prompts)
    raw = _pair_utilities(table, a0, b0, basis, w_seen[u0])
    beta = cfg.margin_scale / float(raw.std())
    true_basis = basis * beta

    def draw(n_users, per_user, prompts, weights, prefix):
        users, a, b = pairs(n_users, per_user, prompts)
        m = _pair_utilities(table, a, b, true_basis, weights[users])
        first = torch.rand(m.shape, generator=g) < torch.sigmoid(m)
        chosen, rejected = torch.where(first, a, b), torch.where(first, b, a)
        ids = [f"{prefix}{i:05d}" for i in range(n_users)]
        return Comparisons.from_pairs(table, chosen, rejected, users, user_ids=ids)

    seen_train = draw(cfg.n_seen, cfg.train_per_user, train_prompts, w_seen, "seen-")
    seen_test = draw(cfg.n_seen, cfg.test_per_user, test_prompts, w_seen, "seen-")
    few = draw(cfg.n_unseen, cfg.fewshot_per_user, train_prompts, w_unseen, "new-")
    unseen_test = draw(cfg.n_unseen, cfg.test_per_user, test_prompts, w_unseen, "new-")

    mean_w = w_seen.mean(0)
    v_ref = true_basis @ mean_w
    noise = torch.randn(d, generator=g)
    v_ref = v_ref + cfg.reference_noise * noise * v_ref.norm() / noise.norm()

    split = ProtocolSplit(
        seen_train, seen_test, few, unseen_test, reference_head=v_ref, info={"source": "simulated"}
    )
    pop = SimulatedPopulation(cfg, split, true_basis, {"seen": w_seen, "unseen": w_unseen})
    for key, data, w in (
        ("train", seen_train, w_seen),
        ("seen_test", seen_test, w_seen),
        ("fewshot_train", few, w_unseen),
        ("unseen_test", unseen_test, w_unseen),
    ):
        m = bt_margins(data.project(true_basis), w, data.user_index, 1.0)
        pop.oracle[key], pop.oracle[f"{key}_std"] = mean_accuracy(m, data)
        if key == "unseen_test":
            split.unseen_test_margins = m.detach().to(torch.float64)
    return pop

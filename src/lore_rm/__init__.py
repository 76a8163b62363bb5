"""lore-rm: personalised reward models with a shared low-rank reward basis (LoRe)."""

import lore_rm.reproducible_blas  # noqa: F401  (first: before any matrix product runs)
from lore_rm.comparisons import Comparisons
from lore_rm.embed.split import load_split
from lore_rm.errors import DataError, LoreError, ModelFormatError, UnknownUserError
from lore_rm.evaluate.active import active_sweep
from lore_rm.evaluate.protocols import four_numbers, rank_sweep, run_protocol, shots_sweep
from lore_rm.evaluate.simulate import PopulationConfig, simulate_population
from lore_rm.fit.config import FitConfig
from lore_rm.fit.model import LowRankReward
from lore_rm.metrics import FourNumbers, mean_accuracy, per_user_accuracy
from lore_rm.protocol import ProtocolSplit
from lore_rm.version import __version__ as __version__

__all__ = [
    "Comparisons",
    "DataError",
    "FourNumbers",
    "FitConfig",
    "LoreError",
    "LowRankReward",
    "ModelFormatError",
    "PopulationConfig",
    "ProtocolSplit",
    "UnknownUserError",
    "active_sweep",
    "four_numbers",
    "load_split",
    "mean_accuracy",
    "per_user_accuracy",
    "rank_sweep",
    "run_protocol",
    "shots_sweep",
    "simulate_population",
]

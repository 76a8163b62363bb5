"""Evaluation: the published protocols, reports, RewardBench and planted populations.

The metrics themselves are pure functions in :mod:`lore_rm.metrics` (re-exported here).
"""

from lore_rm.evaluate.active import active_sweep
from lore_rm.evaluate.groups import GroupReport, group_report
from lore_rm.evaluate.personal_rows import per_user_rows, personalisation_rows
from lore_rm.evaluate.personalrewardbench import BenchmarkScore, score_personalrewardbench
from lore_rm.evaluate.protocols import (
    ProtocolResult,
    four_numbers,
    rank_sweep,
    run_protocol,
    sample_shots,
    select_rank,
    shots_sweep,
)
from lore_rm.evaluate.simulate import PopulationConfig, SimulatedPopulation, simulate_population
from lore_rm.metrics import METRICS, FourNumbers, mean_accuracy, per_user_accuracy

__all__ = [
    "METRICS",
    "BenchmarkScore",
    "FourNumbers",
    "GroupReport",
    "ProtocolResult",
    "active_sweep",
    "PopulationConfig",
    "SimulatedPopulation",
    "four_numbers",
    "group_report",
    "mean_accuracy",
    "per_user_accuracy",
    "per_user_rows",
    "personalisation_rows",
    "rank_sweep",
    "run_protocol",
    "sample_shots",
    "score_personalrewardbench",
    "select_rank",
    "shots_sweep",
    "simulate_population",
]

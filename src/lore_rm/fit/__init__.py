"""Fitting: the settings, the solvers and the personalised reward model they produce."""

from lore_rm.fit.config import FitConfig, Recipe
from lore_rm.fit.model import LowRankReward
from lore_rm.fit.solvers import fit_joint, fit_user_weights

__all__ = ["FitConfig", "LowRankReward", "Recipe", "fit_joint", "fit_user_weights"]

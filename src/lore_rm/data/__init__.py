"""Preference data: dataset folders, loaders for common formats and the benchmarks, splits."""

from lore_rm.data.community_alignment import (
    CommunityAlignmentConfig,
    prepare_community_alignment,
)
from lore_rm.data.dataset import PreferenceDataset
from lore_rm.data.generic import GenericConfig, prepare_generic
from lore_rm.data.personalllm import PersonalLLMConfig, prepare_personalllm
from lore_rm.data.personalrewardbench import (
    PersonalRewardBenchConfig,
    prepare_personalrewardbench,
)
from lore_rm.data.prism import PRISMConfig, prepare_prism
from lore_rm.data.tldr import TLDRConfig, prepare_tldr
from lore_rm.data.writer import TextTable, write_dataset

__all__ = [
    "CommunityAlignmentConfig",
    "GenericConfig",
    "PRISMConfig",
    "PersonalLLMConfig",
    "PersonalRewardBenchConfig",
    "PreferenceDataset",
    "TLDRConfig",
    "TextTable",
    "prepare_community_alignment",
    "prepare_generic",
    "prepare_personalllm",
    "prepare_personalrewardbench",
    "prepare_prism",
    "prepare_tldr",
    "write_dataset",
]

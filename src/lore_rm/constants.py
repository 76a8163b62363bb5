"""Names of every file lore-rm writes or reads, and the format records' names and versions.

One place, so a reader and its writer can never disagree on a name.
"""

from __future__ import annotations

# A model folder (LowRankReward.save_pretrained): the PEFT idea, a small head on a named
# frozen backbone.
MODEL_FORMAT = "lore-rm"
# 3: the learned few-shot prior (prior_mean, prior_precision); 2: user ids in users.json
# (1: in config.json). Every earlier version is still read.
MODEL_FORMAT_VERSION = 5
MODEL_FORMAT_VERSIONS_READ = (1, 2, 3, 4, 5)
MODEL_CONFIG_FILE = "config.json"
MODEL_WEIGHTS_FILE = "model.safetensors"
MODEL_USERS_FILE = "users.json"
MODEL_CARD_FILE = "README.md"
TRAINING_FILE = "training.json"  # lore fit: dataset, backbone, accuracy, fit history

# A dataset folder (lore prepare ...).
DATASET_FORMAT = "lore-rm-dataset"
DATASET_FORMAT_VERSION = 1
DATASET_FILE = "dataset.json"
COMPARISONS_FILE = "comparisons.parquet"
TEXTS_FILE = "texts.parquet"
USERS_FILE = "users.parquet"  # optional: one row per user, their attributes
EMBEDDINGS_DIR = "embeddings"

# The embedding store inside a dataset folder (lore embed).
STORE_FORMAT = "lore-rm-embeddings"
STORE_FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
HEAD_FILE = "reference_head.safetensors"

# lore serve's database, next to the model folder.
DB_FILE = "lore-serve.sqlite"

# An exported transformers reward model (lore export).
EXPORT_FORMAT = "lore-rm-export"
EXPORT_FORMAT_VERSION = 1
EXPORT_FILE = "lore_export.json"
USER_WEIGHTS_FILE = "lore_user_weights.safetensors"

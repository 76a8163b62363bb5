"""The on-disk layout of a dataset folder, shared by the data and embedding modules.

    DIR/dataset.json         how it was made: format, format_version, source, protocol,
                             parameters (seeds, caps, rates), counts
    DIR/comparisons.parquet  one row per comparison: user_id (string), prompt_id (string),
                             chosen, rejected (int64 row indices into texts.parquet and the
                             embedding store), split (one of
                             lore_rm.protocol.PROTOCOL_ROLES), plus any source fields
                             worth keeping
    DIR/texts.parquet        one row per unique conversation: text_id (int64, equal to the
                             row index), prompt_id (string), messages (JSON string: a list of
                             {"role", "content"} objects, the prompt messages then the
                             assistant response being scored)
    DIR/users.parquet        (optional) one row per user: user_id, population (seen /
                             unseen), attribute columns (strings; lore_rm.data.users), and
                             for simulated sources their true weights
    DIR/rejects.jsonl        (optional; prepare generic --skip-invalid) the rows left out
    DIR/embeddings/          the embedding store (manifest + safetensors shards), row i
                             embedding texts.parquet row i

Identical conversations are stored once; texts no comparison uses are not stored. Folders are
written by lore_rm.data.writer.write_dataset (atomically) and read by
lore_rm.data.dataset.PreferenceDataset. docs/data.md describes the format for users.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lore_rm.constants import (  # noqa: F401  (re-exported: the dataset layout's names)
    COMPARISONS_FILE,
    DATASET_FILE,
    DATASET_FORMAT,
    DATASET_FORMAT_VERSION,
    EMBEDDINGS_DIR,
    TEXTS_FILE,
    USERS_FILE,
)
from lore_rm.conversation import Conversation
from lore_rm.errors import DataError


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """The parquet table at ``path``; a one-line DataError naming the file when it is missing,
    truncated, not parquet, or lacks one of ``columns``."""
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"{path}: not a readable parquet file ({first})") from None


def parquet_rows(path: str | Path) -> int:
    """The number of rows of the parquet file at ``path`` (from its footer), with
    :func:`read_parquet`'s one-line errors."""
    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except (pa.ArrowException, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"{path}: not a readable parquet file ({first})") from None


def read_conversations(dataset_dir: str | Path) -> list[Conversation]:
    """Every unique conversation of a dataset folder, in embedding-row order."""
    table = read_parquet(Path(dataset_dir) / TEXTS_FILE, columns=["text_id", "messages"])
    ids = table.column("text_id").to_numpy()
    if len(ids) and not (ids == range(len(ids))).all():
        raise DataError(f"{dataset_dir}/{TEXTS_FILE}: text_id must equal the row index")
    return [json.loads(m) for m in table.column("messages").to_pylist()]

"""Writing a dataset folder: unique texts, the comparisons table and ``dataset.json``.

The folder is built in a hidden temporary folder beside the target and renamed into place at
the end, so a failed or interrupted run leaves nothing behind; the same inputs and seed give
byte-identical files (no timestamps, no absolute paths, sorted JSON keys, fixed parquet
settings).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from array import array
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lore_rm.data.layout import (
    COMPARISONS_FILE,
    DATASET_FILE,
    DATASET_FORMAT,
    DATASET_FORMAT_VERSION,
    EMBEDDINGS_DIR,
    TEXTS_FILE,
)
from lore_rm.errors import DataError
from lore_rm.io import atomic_folder
from lore_rm.protocol import PROTOCOL_ROLES

Message = dict[str, str]
REQUIRED_COLUMNS = ("user_id", "prompt_id", "chosen", "rejected", "split")
_PARQUET = dict(compression="zstd", compression_level=3, use_dictionary=True, write_statistics=True)


def message(role: str, content: str) -> Message:
    """A message in the one canonical key order (so equal messages serialise equally)."""
    return {"role": role, "content": content}


def dumps(obj) -> str:
    """Canonical compact JSON (unicode kept, key order as built)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class TextTable:
    """Interns conversations: one row per unique (prompt messages, response) pair.

    ``add`` returns the row index (the future embedding row). A text's ``prompt_id`` is the
    one given with its first occurrence; without one, prompts are numbered ``p0, p1, ...`` in
    first-seen order. The JSON of every text is kept once, as UTF-8 bytes in one buffer.
    """

    def __init__(self) -> None:
        self._rows: dict[bytes, int] = {}
        self._prompts: dict[bytes, str] = {}
        self._prompt_keys: dict[str, bytes] = {}  # automatic prompt id -> its content digest
        self._text_keys = bytearray()  # 8 bytes of each text's content digest, row by row
        self.prompt_ids: list[str] = []
        self._data = bytearray()
        self._offsets = array("q", [0])

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def text(self, row: int) -> str:
        """The JSON messages of one row."""
        return self._data[self._offsets[row] : self._offsets[row + 1]].decode("utf-8")

    def prompt_id(self, prompt: Sequence[Message]) -> str:
        """The automatic id of a prompt (``p<n>`` in first-seen order)."""
        key = _digest(dumps(list(prompt)).encode("utf-8"))
        pid = self._prompts.get(key)
        if pid is None:
            pid = self._prompts[key] = f"p{len(self._prompts)}"
            self._prompt_keys[pid] = key[:8]
        return pid

    def prompt_hashes(self, prompt_ids: Sequence[str]) -> np.ndarray:
        """uint64 per id: of the prompt's content for automatic ids (``p<n>`` numbers change
        when rows are added before, the content does not), else of the id itself."""
        keys = [self._prompt_keys.get(p) for p in prompt_ids]
        if all(k is not None for k in keys):
            return np.frombuffer(b"".join(keys), dtype="<u8").astype(np.uint64)  # type: ignore[arg-type]
        from lore_rm.data.assign import stable_hashes

        return stable_hashes(prompt_ids)

    def text_hashes(self) -> np.ndarray:
        """uint64 per text row, from its content."""
        return np.frombuffer(bytes(self._text_keys), dtype="<u8").astype(np.uint64)

    def add(
        self, prompt: Sequence[Message], response: Message, prompt_id: str | None = None
    ) -> int:
        data = dumps([*prompt, response]).encode("utf-8")
        key = _digest(data)
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = len(self.prompt_ids)
            self._text_keys += key[:8]
            self.prompt_ids.append(prompt_id if prompt_id is not None else self.prompt_id(prompt))
            self._data += data
            self._offsets.append(len(self._data))
        return row

    def to_arrow(self, keep: np.ndarray | None = None) -> pa.Table:
        """The texts table; ``keep`` (sorted row indices) selects and renumbers rows."""
        n = len(self)
        offsets = pa.py_buffer(np.frombuffer(self._offsets, dtype=np.int64))
        msgs = pa.Array.from_buffers(
            pa.large_string(), n, [None, offsets, pa.py_buffer(self._data)]
        )
        pids = pa.array(self.prompt_ids, pa.string())
        if keep is not None:
            idx = pa.array(keep)
            pids, msgs = pids.take(idx), msgs.take(idx)
        return pa.table(
            {
                "text_id": pa.array(np.arange(len(msgs), dtype=np.int64)),
                "prompt_id": pids,
                "messages": msgs,
            }
        )


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def categorical(codes: np.ndarray, names: Sequence[str]) -> pa.Array:
    """A plain string column built from integer codes into ``names`` (vectorised)."""
    dictionary = pa.array(list(names), pa.string())
    arr = pa.DictionaryArray.from_arrays(pa.array(np.asarray(codes, dtype=np.int32)), dictionary)
    return arr.cast(pa.string())


def file_digest(path: Path) -> dict:
    """Name, size and sha256 of an input file (recorded in dataset.json)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": h.hexdigest()}


def write_dataset(
    out: str | Path,
    comparisons: Mapping[str, object] | pa.Table,
    texts: TextTable,
    *,
    source: str,
    protocol: str,
    parameters: Mapping,
    seed: int | None,
    inputs: Sequence[Mapping] = (),
    dropped: Mapping[str, int] | None = None,
    extra_files: Mapping[str, pa.Table | bytes] | None = None,
    hub: Mapping | None = None,
    overwrite: bool = False,
    discard_embeddings: bool = False,
) -> Path:
    """Validate and write a dataset folder atomically; returns its path.

    ``comparisons`` has the columns of :data:`REQUIRED_COLUMNS` (``chosen`` / ``rejected``
    index ``texts``) plus any source fields. Texts no comparison uses are dropped and the
    indices renumbered. ``dropped`` counts what the preparation left out, by reason.
    ``extra_files`` are further files: parquet tables (e.g. simulated users' true weights) or
    bytes written as they are (e.g. the rows a preparation skipped, as JSON lines).
    ``hub`` pins a Hugging Face Hub source in ``dataset.json`` (repository, revision asked
    for, commit the files came from: :func:`lore_rm.data.hub.hub_record`).

    With ``overwrite``, an existing folder's embedding store is kept when it was made from
    exactly the texts written now (a re-split, a new seed): embedding is the costly step. A
    store of other texts is refused unless ``discard_embeddings``.
    """
    table = comparisons if isinstance(comparisons, pa.Table) else pa.table(dict(comparisons))
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"comparisons lack column(s) {missing}")
    if table.num_rows == 0:
        raise DataError("no comparisons left to write: every row was filtered out")
    order = list(REQUIRED_COLUMNS) + [c for c in table.column_names if c not in REQUIRED_COLUMNS]
    table = table.select(order)
    table = table.set_column(0, "user_id", table.column("user_id").cast(pa.string()))
    table = table.set_column(1, "prompt_id", table.column("prompt_id").cast(pa.string()))
    table = table.set_column(4, "split", table.column("split").cast(pa.string()))
    chosen = table.column("chosen").to_numpy().astype(np.int64)
    rejected = table.column("rejected").to_numpy().astype(np.int64)
    _validate(table, chosen, rejected, len(texts))

    used = np.unique(np.concatenate([chosen, rejected]))
    keep = None
    if used.size < len(texts):
        remap = np.full(len(texts), -1, dtype=np.int64)
        remap[used] = np.arange(used.size)
        chosen, rejected, keep = remap[chosen], remap[rejected], used
    table = table.set_column(2, "chosen", pa.array(chosen))
    table = table.set_column(3, "rejected", pa.array(rejected))
    text_table = texts.to_arrow(keep)

    info = {
        "format": DATASET_FORMAT,
        "format_version": DATASET_FORMAT_VERSION,
        "source": source,
        "protocol": protocol,
        "parameters": dict(parameters),
        "seed": seed,
        "inputs": [dict(i) for i in inputs],
        "dropped": dict(dropped or {}),
        "counts": _counts(table, text_table),
    }
    if hub is not None:
        info["hub"] = dict(hub)
    with atomic_folder(out, overwrite=overwrite) as tmp:
        pq.write_table(table, tmp / COMPARISONS_FILE, **_PARQUET)
        pq.write_table(text_table, tmp / TEXTS_FILE, **_PARQUET)
        for name, extra in (extra_files or {}).items():
            if isinstance(extra, bytes):
                (tmp / name).write_bytes(extra)
            else:
                pq.write_table(extra, tmp / name, **_PARQUET)
        (tmp / DATASET_FILE).write_text(
            json.dumps(info, indent=2, sort_keys=True, ensure_ascii=False) + "\n", "utf-8"
        )
        carry_embeddings(Path(out), tmp, discard_embeddings)
    return Path(out)


def carry_embeddings(old: Path, new: Path, discard: bool) -> None:
    """Give the dataset folder ``new`` the embedding store of ``old`` when it was made from
    the texts ``new`` holds (hard links, so ``old`` stays whole until the swap); refuse to
    drop a store of other texts unless ``discard``."""
    from lore_rm.data.store_manifest import read_manifest, texts_fingerprint

    store = old / EMBEDDINGS_DIR
    if not store.is_dir() or not any(store.iterdir()):
        return
    try:
        made_from = read_manifest(store).get("texts_sha256")
    except DataError:
        made_from = None  # no readable manifest: nothing worth keeping was finished
    if made_from is None:
        return
    if made_from != texts_fingerprint(new):
        if discard:
            return
        why = (
            f"{store}: these embeddings are of other texts than the new preparation writes, "
            "and replacing the folder would delete them; pass "
        )
        err = DataError(why + "discard_embeddings=True to do so, or choose another out folder")
        err.cli_message = why + "--discard-embeddings to do so, or choose another --out"
        raise err
    target = new / EMBEDDINGS_DIR
    target.mkdir()
    for f in store.iterdir():
        if f.is_file() and not f.name.startswith("."):
            try:
                os.link(f, target / f.name)
            except OSError:
                shutil.copy2(f, target / f.name)


def _validate(table: pa.Table, chosen: np.ndarray, rejected: np.ndarray, n_texts: int) -> None:
    for name in ("user_id", "prompt_id", "split"):
        nulls = table.column(name).null_count
        if nulls:
            raise DataError(f"comparisons: {nulls} row(s) have no {name}")
    bad_role = pc.invert(pc.is_in(table.column("split"), value_set=pa.array(PROTOCOL_ROLES)))
    if pc.any(bad_role).as_py():
        first = pc.index(bad_role, True).as_py()
        raise DataError(
            f"comparisons row {first}: split {table.column('split')[first].as_py()!r} is not "
            f"one of {', '.join(PROTOCOL_ROLES)}"
        )
    for name, idx in (("chosen", chosen), ("rejected", rejected)):
        out = (idx < 0) | (idx >= n_texts)
        if out.any():
            first = int(np.flatnonzero(out)[0])
            raise DataError(f"comparisons row {first}: {name} index {idx[first]} has no text")
    same = chosen == rejected
    if same.any():
        first = int(np.flatnonzero(same)[0])
        raise DataError(f"comparisons row {first}: chosen and rejected are the same text")


def _counts(table: pa.Table, texts: pa.Table) -> dict:
    by_role = table.group_by("split").aggregate(
        [("user_id", "count"), ("user_id", "count_distinct")]
    )
    found = {
        r["split"]: {"comparisons": r["user_id_count"], "users": r["user_id_count_distinct"]}
        for r in by_role.to_pylist()
    }
    return {
        "comparisons": table.num_rows,
        "users": pc.count_distinct(table.column("user_id")).as_py(),
        "prompts": pc.count_distinct(table.column("prompt_id")).as_py(),
        "texts": texts.num_rows,
        "roles": {r: found.get(r, {"comparisons": 0, "users": 0}) for r in PROTOCOL_ROLES},
    }

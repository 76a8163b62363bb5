"""Reading the files preference data comes in, with errors that name the file and the row.

Formats (by name): JSON Lines (``.jsonl``; ``.json`` holding JSON lines or one JSON array, as
the summarize_from_feedback files do), parquet, CSV, and the Arrow files ``datasets`` writes
with ``save_to_disk``; ``.gz`` is read transparently for the text formats. JSON is parsed with
Python's ``json``, which accepts the bare ``NaN`` some sources hold (PRISM's survey).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lore_rm.data.writer import file_digest
from lore_rm.errors import DataError

_SUFFIXES = {
    ".jsonl": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".arrow": "arrow",
}
DATA_SUFFIXES = tuple(_SUFFIXES)
# files `datasets.save_to_disk` writes beside the data, never data themselves
_METADATA_FILES = {"state.json", "dataset_info.json", "dataset_dict.json"}
_BATCH_ROWS = 4096
# (row, reason, message, raw line): a line that holds no record, skipped
OnBad = Callable[[int, str, str, object], None]


def detect_format(path: Path) -> tuple[str, bool]:
    """(format, gzipped) from the file name."""
    name = path.name.lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    for suffix, fmt in _SUFFIXES.items():
        if name.endswith(suffix):
            if gz and fmt in ("parquet", "arrow"):
                break
            return fmt, gz
    raise DataError(
        f"{path}: unknown file type (expected one of {', '.join(DATA_SUFFIXES)}, "
        "or .jsonl.gz / .json.gz / .csv.gz)"
    )


class SourceFile:
    """One input file: its columns, its records (row number, dict) and columnar reads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            what = "is a folder, not a file" if self.path.is_dir() else "no such file"
            raise DataError(f"{self.path}: {what}")
        self.format, self.gzipped = detect_format(self.path)

    def __repr__(self) -> str:
        return f"SourceFile({str(self.path)!r})"

    @property
    def name(self) -> str:
        """The file's name (what a dataset folder records: no folders, no absolute path)."""
        return self.path.name

    def digest(self) -> dict:
        """Name, size and sha256 of the file."""
        return file_digest(self.path)

    # ---- locating ------------------------------------------------------------------------
    @property
    def row_word(self) -> str:
        return "line" if self.format in ("jsonl", "json") else "row"

    def where(self, row: int) -> str:
        """``"FILE: line N"`` (text formats count lines) or ``"FILE: row N"`` (1-based)."""
        return f"{self.path}: {self.row_word} {row}"

    def error(self, row: int, message: str) -> DataError:
        return DataError(f"{self.where(row)}: {message}")

    # ---- schema ------------------------------------------------------------------------------
    def columns(self) -> list[str] | None:
        """Column names from the schema or header; None for JSON (read per record)."""
        if self.format == "parquet":
            return list(self._parquet().schema_arrow.names)
        if self.format == "arrow":
            return list(self._arrow_reader().schema.names)
        if self.format == "csv":
            with self._text() as f:
                try:
                    header = next(csv.reader(f))
                except StopIteration:
                    raise DataError(f"{self.path}: empty CSV file (no header row)") from None
                except (csv.Error, UnicodeDecodeError) as e:
                    raise DataError(f"{self.path}: row 0 (header): {e}") from None
            return header
        return None

    def require_columns(self, required: Sequence[str]) -> None:
        """Raise naming the file and the missing columns (schema formats only)."""
        cols = self.columns()
        if cols is None:
            return
        missing = [c for c in required if c not in cols]
        if missing:
            raise DataError(
                f"{self.path}: missing column(s) {name_list(missing)} "
                f"(columns present: {name_list(cols, quote=False) or 'none'})"
            )

    # ---- reading ---------------------------------------------------------------------------
    def records(
        self, columns: Sequence[str] | None = None, on_bad: OnBad | None = None
    ) -> Iterator[tuple[int, dict]]:
        """Yield (row number, record) pairs. ``columns`` limits columnar reads.

        A line that holds no record (not JSON, not an object, not UTF-8, a CSV row with too
        many fields) is an error, or with ``on_bad`` is passed to it as (row, reason, message,
        raw line) and skipped. A file that cannot be read on is always an error.
        """
        if self.format in ("jsonl", "json"):
            yield from self._json_records(on_bad)
        elif self.format == "csv":
            yield from self._csv_records(on_bad)
        else:
            row = 0
            for batch in self._batches(columns):
                for rec in batch.to_pylist():
                    row += 1
                    yield row, rec

    def batches(self, columns: Sequence[str], rows: int = _BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """The file in record batches of at most ``rows`` rows (``columns`` must exist)."""
        self.require_columns(columns)
        if self.format in ("parquet", "arrow"):
            yield from self._batches(columns, rows)
        else:
            yield from self.table(columns).to_batches(max_chunksize=rows)

    def table(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The whole file as an Arrow table (only ``columns``, which must exist)."""
        if columns is not None:
            self.require_columns(columns)
        if self.format in ("parquet", "arrow"):
            batches = list(self._batches(columns))
            schema = batches[0].schema if batches else None
            if schema is None:
                return self._empty_table(columns)
            return pa.Table.from_batches(batches, schema=schema)
        recs = []
        for row, rec in self.records():
            if columns is not None:
                missing = [c for c in columns if c not in rec]
                if missing:
                    raise self.error(row, f"missing field(s) {', '.join(map(repr, missing))}")
                rec = {c: rec[c] for c in columns}
            recs.append(rec)
        try:
            return pa.Table.from_pylist(recs)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise DataError(f"{self.path}: inconsistent value types across rows ({e})") from None

    # ---- internals ---------------------------------------------------------------------------
    def _binary(self):
        return gzip.open(self.path, "rb") if self.gzipped else open(self.path, "rb")  # noqa: SIM115

    def _text(self):
        return io.TextIOWrapper(self._binary(), encoding="utf-8", newline="")

    def _read_error(self, after: int, e: Exception) -> DataError:
        """A read that failed after ``after`` complete lines / rows (a truncated gzip file)."""
        done = f"after {self.row_word} {after}" if after else f"before {self.row_word} 1"
        if isinstance(e, EOFError) and self.gzipped:
            return DataError(f"{self.path}: truncated gzip file {done} ({e})")
        return DataError(f"{self.path}: unreadable {done} ({type(e).__name__}: {e})")

    def _bad_line(self, on_bad: OnBad | None, row: int, reason: str, message: str, raw) -> None:
        """A line that is no record: an error, or reported to ``on_bad`` and skipped."""
        if on_bad is None:
            raise self.error(row, message)
        on_bad(row, reason, message, raw)

    def _json_records(self, on_bad: OnBad | None) -> Iterator[tuple[int, dict]]:
        # Lines are read as bytes and decoded one by one: a truncated gzip file or a bad byte
        # is then reported at its own line (a text wrapper loses whole chunks read before).
        with self._binary() as f:
            lineno, started = 0, False
            while True:
                try:
                    raw = next(f)
                except StopIteration:
                    return
                except (OSError, EOFError, zlib.error) as e:
                    raise self._read_error(lineno, e) from None
                lineno += 1
                if not raw.strip():
                    continue
                if not started and raw.lstrip().startswith(b"["):  # one JSON array
                    yield from self._json_array(b"\n" * (lineno - 1) + raw, f, on_bad)
                    return
                started = True
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    message = f"not UTF-8 ({e.reason} at byte {e.start})"
                    self._bad_line(
                        on_bad, lineno, "not_utf8", message, raw.decode("utf-8", "replace")
                    )
                    continue
                yield from self._json_line(lineno, text, on_bad)

    def _json_line(
        self, lineno: int, text: str, on_bad: OnBad | None
    ) -> Iterator[tuple[int, dict]]:
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            self._bad_line(on_bad, lineno, "not_json", f"not valid JSON ({e.msg})", text.rstrip())
            return
        if not isinstance(rec, dict):
            message = f"expected a JSON object, got {type(rec).__name__}"
            self._bad_line(on_bad, lineno, "not_an_object", message, rec)
            return
        yield lineno, rec

    def _json_array(self, head: bytes, f, on_bad: OnBad | None) -> Iterator[tuple[int, dict]]:
        try:
            data = json.loads((head + f.read()).decode("utf-8"))
        except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
            raise DataError(f"{self.path}: unreadable ({e})") from None
        except json.JSONDecodeError as e:
            raise self.error(e.lineno, f"not valid JSON ({e.msg})") from None
        for i, rec in enumerate(data, 1):
            if isinstance(rec, dict):
                yield i, rec
            elif on_bad is None:
                raise DataError(f"{self.path}: record {i} is not a JSON object")
            else:
                on_bad(i, "not_an_object", f"record {i} is not a JSON object", rec)

    def _csv_records(self, on_bad: OnBad | None) -> Iterator[tuple[int, dict]]:
        row = 0
        with self._text() as f:
            reader = csv.reader(f)
            try:
                header = next(reader)
                for values in reader:
                    row += 1
                    if not values:
                        continue
                    if len(values) > len(header):
                        message = f"{len(values)} fields but the header has {len(header)}"
                        self._bad_line(on_bad, row, "too_many_fields", message, values)
                        continue
                    rec: dict[str, str | None] = dict(zip(header, values, strict=False))
                    for name in header[len(values) :]:
                        rec[name] = None
                    yield row, rec
            except StopIteration:
                raise DataError(f"{self.path}: empty CSV file (no header row)") from None
            except (OSError, EOFError, zlib.error) as e:
                raise self._read_error(row, e) from None
            except (csv.Error, UnicodeDecodeError) as e:
                raise DataError(f"{self.path}: unreadable CSV after row {row} ({e})") from None

    def _parquet(self) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(self.path)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{self.path}: not a readable parquet file ({e})") from None

    def _arrow_reader(self):
        try:
            return pa.ipc.open_stream(self.path)
        except (pa.ArrowException, OSError):
            pass
        try:
            return pa.ipc.open_file(self.path)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{self.path}: not a readable Arrow file ({e})") from None

    def _batches(
        self, columns: Sequence[str] | None, rows: int = _BATCH_ROWS
    ) -> Iterator[pa.RecordBatch]:
        try:
            if self.format == "parquet":
                pf = self._parquet()
                yield from pf.iter_batches(
                    batch_size=rows, columns=list(columns) if columns else None
                )
            else:
                reader = self._arrow_reader()
                for batch in reader:
                    yield batch.select(list(columns)) if columns else batch
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{self.path}: corrupt or truncated {self.format} file ({e})") from None

    def _empty_table(self, columns: Sequence[str] | None) -> pa.Table:
        schema = (
            self._parquet().schema_arrow
            if self.format == "parquet"
            else self._arrow_reader().schema
        )
        if columns:
            schema = pa.schema([schema.field(c) for c in columns])
        return schema.empty_table()


class RecordsSource:
    """Rows handed over in memory (row dicts, a ``datasets.Dataset``), read like a file:
    numbered from 1 as rows, ``name`` standing for the file in messages and records."""

    format = "rows"
    row_word = "row"

    def __init__(
        self, name: str, rows: Callable[[], Iterable], columns: Sequence[str] | None = None
    ) -> None:
        self.name = self.path = name
        self._rows = rows
        self._columns = list(columns) if columns is not None else None
        self._sha = hashlib.sha256()
        self._count = 0

    def __repr__(self) -> str:
        return f"RecordsSource({self.name!r})"

    def where(self, row: int) -> str:
        return f"{self.name}: row {row}"

    def error(self, row: int, message: str) -> DataError:
        return DataError(f"{self.where(row)}: {message}")

    def columns(self) -> list[str] | None:
        """The column names when known (a Dataset's); None for row dicts (read per record)."""
        return self._columns

    def records(
        self, columns: Sequence[str] | None = None, on_bad: OnBad | None = None
    ) -> Iterator[tuple[int, dict]]:
        """Yield (row number, record) pairs, as :meth:`SourceFile.records` does."""
        for row, rec in enumerate(self._rows(), 1):
            line = json.dumps(rec, sort_keys=True, ensure_ascii=False, default=str) + "\n"
            self._sha.update(line.encode("utf-8"))
            self._count = row
            if isinstance(rec, Mapping):
                yield row, dict(rec)
            elif on_bad is None:
                raise self.error(row, f"expected a dict, got {type(rec).__name__}")
            else:
                on_bad(row, "not_an_object", f"expected a dict, got {type(rec).__name__}", rec)

    def digest(self) -> dict:
        """Name, number and sha256 of the rows read (each as JSON with sorted keys, a line)."""
        return {"name": self.name, "rows": self._count, "sha256": self._sha.hexdigest()}


def dataset_source(dataset, name: str = "<datasets.Dataset>") -> RecordsSource:
    """A ``datasets.Dataset``, read in Arrow batches (the values its save_to_disk files hold;
    ``datasets`` itself is not imported here)."""

    def rows() -> Iterator[dict]:
        for batch in dataset.with_format("arrow").iter(batch_size=_BATCH_ROWS):
            yield from batch.to_pylist()

    return RecordsSource(name, rows, dataset.column_names)


def saved_dataset_files(root: Path, split: str) -> list[Path]:
    """The data files of a folder: the Arrow files of a ``datasets`` ``save_to_disk`` folder
    in order (those of split ``split`` when it holds a DatasetDict), else every data file
    below it."""
    if (root / "dataset_dict.json").is_file():
        splits = _json_file(root / "dataset_dict.json").get("splits") or []
        if split not in splits:
            raise DataError(
                f"{root}: a saved DatasetDict with split(s) {name_list(splits) or 'none'}, "
                f"not {split!r} (choose one with --hf-split)"
            )
        root = root / split
    if (root / "state.json").is_file():
        shards = _json_file(root / "state.json").get("_data_files") or []
        if shards:
            return [root / s["filename"] for s in shards]
    files = find_data_files(root)
    if not files:
        raise DataError(f"{root}: no data files in this folder")
    return files


def _json_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


def name_list(names: Sequence[str], *, quote: bool = True, most: int = 8) -> str:
    """``'a', 'b', ... and N more``: column lists short enough to read in an error."""
    shown = [repr(n) if quote else str(n) for n in names[:most]]
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(shown) + more


def find_data_files(root: Path, split: str | None = None) -> list[Path]:
    """Data files below ``root`` (sorted), or those of one ``split``.

    A file belongs to split ``s`` when a folder on its path is named ``s`` or its name starts
    with ``s`` (``train-00000-of-00001.parquet``, ``train.jsonl``, ``train/data-0.arrow``).
    """
    files = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        if p.name in _METADATA_FILES:
            continue
        try:
            detect_format(p)
        except DataError:
            continue
        if split is None or _in_split(p.relative_to(root), split):
            files.append(p)
    return files


def _in_split(rel: Path, split: str) -> bool:
    return split in rel.parts[:-1] or rel.name.lower().startswith(split)


def split_of_name(path: Path, splits: Sequence[str]) -> str | None:
    """The split a file's name or folder says it holds, or None."""
    for s in splits:
        if _in_split(Path(*path.parts[-2:]), s):
            return s
    return None


def expand_inputs(paths: Sequence[str | Path], what: str) -> list[Path]:
    """Files named directly plus the data files found below named folders, in order."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = find_data_files(p)
            if not found:
                raise DataError(f"{p}: no {what} files found in this folder")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    if not files:
        raise DataError(f"no {what} files given")
    return files

"""Data sources: local files, Hub datasets, the embedded world, upstream stage files.

Rows are read as plain dicts so every error can name the file, the row (1-based; the line for
JSONL) and the column. A stage's data is a weighted mixture of sources: weight 1 takes every row
once, 2 every row twice, 0.5 a seeded half.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Callable

from align.errors import DataError

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def read_local(path: Path, max_rows: int | None = None) -> list[dict]:
    """A local file's rows; with `max_rows`, its first rows only. JSONL and CSV files are then
    read only that far, so a glance at a big file costs only the glance."""
    if not path.exists():
        raise DataError("file not found", path=path)
    if not path.is_file():
        raise DataError("is a directory, not a data file; name the file itself "
                        f"({', '.join(LOCAL_SUFFIXES)})" if path.is_dir() else
                        "is not a regular file", path=path)
    suffix = path.suffix.lower()
    if suffix not in LOCAL_SUFFIXES:
        raise DataError(f"unsupported file type '{suffix}'; use one of {', '.join(LOCAL_SUFFIXES)}",
                        path=path)
    if suffix == ".jsonl":
        rows = []
        for line_no, line in enumerate(decoded_lines(path, newline=None), 1):
            if max_rows is not None and len(rows) >= max_rows:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line, object_pairs_hook=_refuse_duplicate_keys)
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON: {exc.msg} (column {exc.colno})",
                                path=path, row=line_no) from None
            except DuplicateKey as exc:
                raise DataError(f"the JSON object gives key '{exc}' twice; the second would "
                                "silently replace the first", path=path, row=line_no) from None
            if not isinstance(row, dict):
                raise DataError("each line must be a JSON object", path=path, row=line_no)
            rows.append(row)
    elif suffix == ".json":
        try:
            data = json.loads(read_text(path), object_pairs_hook=_refuse_duplicate_keys)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON at line {exc.lineno}: {exc.msg}", path=path) from None
        except DuplicateKey as exc:
            raise DataError(f"a JSON object gives key '{exc}' twice; the second would silently "
                            "replace the first", path=path) from None
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))  # {"train": [...]} or {"data": [...]}
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError("a .json dataset must be a list of objects", path=path)
        rows = data
    elif suffix == ".csv":
        rows = read_csv_rows(path, max_rows)
    else:
        rows = read_parquet_rows(path)
    rows = rows if max_rows is None else rows[:max_rows]
    if not rows:
        raise DataError("the dataset is empty", path=path)
    return rows


class DuplicateKey(ValueError):
    """A JSON object with the same key twice (json keeps the last one silently)."""


def _refuse_duplicate_keys(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKey(key)
        seen[key] = value
    return seen


def read_text(path: Path) -> str:
    """A data file's text: UTF-8, with a leading byte-order mark read and dropped. Bytes that are
    not UTF-8 are refused naming the row (line) they are on."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"not UTF-8 text (byte 0x{data[exc.start]:02x}, at byte offset "
                        f"{exc.start}); save the file as UTF-8", path=path, row=line) from None


def decoded_lines(path: Path, newline: str | None):
    """The file's lines, decoded as they are read (`newline` as `open` takes it); bytes that are
    not UTF-8 are refused as `read_text` refuses them, naming their line."""
    try:
        with path.open(encoding="utf-8-sig", newline=newline) as f:
            yield from f
    except UnicodeDecodeError:
        read_text(path)  # raises the DataError that names the line
        raise


def read_csv_rows(path: Path, max_rows: int | None = None) -> list[dict]:
    """CSV rows as dicts; a row with more or fewer fields than the header is refused (csv would
    drop the extra fields or fill the missing ones with nothing), as are repeated column names."""
    reader = csv.reader(decoded_lines(path, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return []
        repeated = sorted({c for c in header if header.count(c) > 1})
        if repeated:
            raise DataError(f"the header (line 1) names column(s) {repeated} more than once; "
                            "each column needs its own name", path=path)
        rows = []
        for i, fields in enumerate(reader, 1):
            if max_rows is not None and len(rows) >= max_rows:
                break
            if not fields:
                continue  # a blank line
            if len(fields) != len(header):
                raise DataError(f"{len(fields)} field(s) but the header has {len(header)} columns "
                                f"({', '.join(header)}); quote fields that contain commas",
                                path=path, row=f"{i} (line {reader.line_num})")
            rows.append(dict(zip(header, fields)))
    except csv.Error as exc:
        raise DataError(f"invalid CSV: {exc}", path=path, row=f"line {reader.line_num}") from None
    return rows


def read_parquet_rows(path: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"not a valid Parquet file ({' '.join(str(exc).split())}); is the file "
                        "really Parquet? Its extension decides how it is read", path=path) from None


def read_hub(repo_id: str, subset: str | None, split: str) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_dataset(repo_id, subset, split=split)
    except Exception as exc:  # datasets raises many types for offline/missing/auth problems
        raise DataError(f"could not load Hub dataset '{repo_id}' (split '{split}'): "
                        f"{type(exc).__name__}: {exc}. Without a network, use a local file.") from None
    return ds.to_list()


def rename_columns(rows: list[dict], mapping: dict[str, str], source: str) -> list[dict]:
    """`columns: {old: new}` renames; the error lists the columns the file has."""
    if not mapping:
        return rows
    missing = [old for old in mapping if old not in rows[0]]
    if missing:
        raise DataError(f"columns {missing} named in `columns` are not in the data; it has "
                        f"{sorted(rows[0])}", path=source, row=1)
    return [{mapping.get(k, k): v for k, v in row.items()} for row in rows]


def check_columns(rows: list[dict], required: set[str], source: str) -> None:
    """Every row has every required column, non-null."""
    for i, row in enumerate(rows, 1):
        for column in sorted(required):
            if column not in row or row[column] is None:
                have = sorted(k for k, v in row.items() if v is not None)
                raise DataError(f"missing column (the row has {have}); map a column to it with "
                                f"`columns: {{yours: {column}}}`", path=source, row=i, column=column)


def take(rows: list[dict], weight: float, max_samples: int | None, seed: int) -> list[dict]:
    if max_samples is not None:
        rows = rows[:max_samples]
    whole, frac = int(weight), weight - int(weight)
    out = rows * whole
    if frac > 0:
        rng = random.Random(seed)
        out += rng.sample(rows, round(len(rows) * frac))
    return out


def mix(parts: list[list[dict]], seed: int) -> list[dict]:
    """Concatenate and shuffle deterministically (every process gets the same order)."""
    rows = [row for part in parts for row in part]
    if len(parts) > 1:
        random.Random(seed).shuffle(rows)
    return rows


def load_rows(sources, resolve: Callable, seed: int) -> list[tuple[str, list[dict]]]:
    """Read each source; `resolve(source) -> (display name, rows)` knows the recipe's paths."""
    out = []
    for i, src in enumerate(sources):
        name, rows = resolve(src)
        rows = rename_columns(rows, src.columns, name)
        out.append((name, take(rows, src.weight, src.max_samples, seed + i)))
    return out

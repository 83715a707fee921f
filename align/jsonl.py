"""JSON Lines: one object per line, the format of every row file align writes.

Reading user data goes through `data.sources.read_local`, which names the file and line of a
malformed row; this reads files align wrote itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable


def write_jsonl(path: Path, rows: Iterable[dict], *, append: bool = False) -> None:
    with Path(path).open("a" if append else "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]

"""One data path for every reader of a stage's data.

Training rows, PPO prompts, `align validate`, the idk probe and the evaluation all go through
`StageData`: a source is read (local file, Hub dataset, the embedded world, a file of an
upstream artifact), its columns renamed, its `max_samples` and `weight` taken, its rows
converted to the layout the reader needs (`data.formats`), and for prompted layouts measured
against the stage's max_length (`data.lengths`). Every problem names the file, row and column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from align.artifacts import Artifact
from align.data.formats import RowProblem, convert_rows
from align.data.lengths import PROMPTED_TARGETS, fit_prompts
from align.data.sources import mix, read_hub, read_local, rename_columns, take
from align.errors import AlignError
from align.kinds import get_kind
from align.recipe import DataSource, Recipe

# Layouts whose rows keep their source row's other columns: a reward callable or the honesty
# evaluation reads them (gold answers, a probe's category, exposure level, attribute).
KEEPS_COLUMNS = ("prompt_only", "qa", "labelled_qa")


def world_dir(recipe: Recipe) -> Path:
    """Where the runner writes the embedded world's splits, so they are read like any file."""
    return recipe.output_dir() / "world"


@dataclass
class PreparedSource:
    """One source, read and converted: what a reader trains on and what was left out."""

    name: str
    rows: list[dict]
    read_rows: int                                   # rows after rename and take
    problems: list[RowProblem] = field(default_factory=list)   # malformed rows dropped
    too_long: int = 0                                # rows whose prompt reaches max_length
    limit: int | None = None                         # the max_length prompts were measured against
    ignored: list[str] = field(default_factory=list)  # source columns the conversion left out
    identical: int = 0                               # preference pairs with chosen == rejected


class StageData:
    """A stage's sources, read the one way. `world` (split -> rows) stands in for the world's
    files before the runner has written them; `tokenizer` is called when prompts need measuring;
    `max_rows` reads only the first rows of each file (a sample, not the training data)."""

    def __init__(self, recipe: Recipe, name: str, inputs: dict[str, Artifact] | None = None, *,
                 world: dict[str, list[dict]] | None = None,
                 tokenizer: Callable[[], Any] | None = None, log: Callable[[str], None] | None = None,
                 max_rows: int | None = None):
        self.recipe, self.name, self.stage = recipe, name, recipe.stages[name]
        self.inputs = inputs or {}
        self.world = world
        self.tokenizer = tokenizer
        self.log = log or (lambda message: None)
        self.dropped: dict[str, int] = {}
        self.max_rows = max_rows

    @property
    def on_error(self) -> str:
        return self.stage.data.on_error if self.stage.data else "fail"

    def default_sources(self) -> list[DataSource]:
        """The stage's training sources, or its kind's default world split."""
        if self.stage.data:
            return self.stage.data.train
        default = get_kind(self.stage.kind).default_world
        if default is None:
            raise AlignError(f"stage '{self.name}' (kind {self.stage.kind}) has no data.")
        return [DataSource(world=default)]

    def read(self, src: DataSource) -> tuple[str, list[dict]]:
        """(display name, rows) of one source."""
        if src.path:
            return str(src.path), read_local(self.recipe.resolve_path(src.path), self.max_rows)
        if src.hub:
            return f"hub:{src.hub}", read_hub(src.hub, src.subset, src.split)
        if src.world:
            if self.world is not None:
                return f"world:{src.world}", self.world[src.world][:self.max_rows]
            return f"world:{src.world}", read_local(world_dir(self.recipe) / f"{src.world}.jsonl",
                                                    self.max_rows)
        return f"{src.stage}/{src.file}", read_local(self.inputs[src.stage].file(src.file),
                                                     self.max_rows)

    def prepare(self, src: DataSource, index: int, target: str) -> PreparedSource:
        """Read, rename, take, convert and (for prompted targets) fit one source."""
        name, rows = self.read(src)
        rows = take(rename_columns(rows, src.columns, name), src.weight, src.max_samples,
                    self.recipe.seed + index)
        result = convert_rows(rows, source=name, target=target, fmt=src.format,
                              label_column=src.label_column, on_error=self.on_error,
                              keep_columns=target in KEEPS_COLUMNS)
        out = PreparedSource(name, result.rows, len(rows), result.dropped, ignored=result.ignored,
                             identical=result.identical)
        tokenizer = self.tokenizer() if self.tokenizer and target in PROMPTED_TARGETS else None
        if tokenizer is not None:
            out.rows, out.too_long, out.limit = fit_prompts(
                result.rows, len(rows), result.dropped, tokenizer, self.stage.args,
                get_kind(self.stage.kind).config_class(), name, self.on_error,
                f"stages.{self.name}.args.max_length")
        return out

    def rows(self, target: str, sources: list[DataSource] | None = None) -> list[dict]:
        """The sources' rows converted to `target` and mixed; what was dropped is logged and
        counted in `self.dropped` (the manifest reports it)."""
        sources = self.default_sources() if sources is None else sources
        parts = []
        for i, src in enumerate(sources):
            prepared = self.prepare(src, i, target)
            if prepared.problems:
                self.dropped[prepared.name] = len(prepared.problems)
                self.log(f"dropped {len(prepared.problems)} malformed rows of {prepared.name} "
                         f"(first: {prepared.problems[0]})")
            if prepared.identical:
                self.log(f"dropped {prepared.identical} pairs of {prepared.name} whose chosen and "
                         "rejected are identical")
            if prepared.too_long:
                self.dropped[prepared.name] = self.dropped.get(prepared.name, 0) + prepared.too_long
                self.log(f"dropped {prepared.too_long} rows of {prepared.name} whose prompt "
                         f"reaches max_length {prepared.limit}")
            parts.append(prepared.rows)
        rows = mix(parts, self.recipe.seed)
        if target in KEEPS_COLUMNS and len(parts) > 1:
            shared = set.intersection(*(set(r) for r in rows)) if rows else set()
            rows = [{k: r[k] for k in shared} for r in rows]  # one table: the columns all share
        return rows

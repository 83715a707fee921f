"""Recipes: YAML -> a validated, resolved description of a DAG of stages.

A recipe is checked whole before anything trains: unknown keys (with the nearest valid key
suggested), wrong types, stage references and cycles, each stage's `args` against the TRL
config class of its kind. Every problem becomes one `RecipeError` paragraph naming the file and
the key path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import difflib
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from align.artifacts import check_writable_dir
from align.data.formats import FORMATS
from align.data.sources import read_text
from align.data.world import WorldConfig, build_world
from align.errors import AlignError, DataError
from align.kinds import KINDS, get_kind, model_kinds
from align.modeling import check_local_model, model_layer_count, module_names
from align.tiny import TinyConfig
from align.trackers import check_report_to

# Keys align sets itself; a recipe that sets them in `args` is refused rather than ignored.
RESERVED_ARGS = ("output_dir", "resume_from_checkpoint", "logging_dir", "push_to_hub", "hub_token")


class RecipeError(AlignError):
    """A recipe problem: names the recipe file and the key path."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ModelSpec(Strict):
    """The base model every first stage starts from."""

    name_or_path: str = "tiny"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    revision: str | None = None
    trust_remote_code: bool = False
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2", "flash_attention_3"] | None = None
    # Settings of the embedded tiny model, when name_or_path is "tiny".
    tiny: dict[str, Any] = Field(default_factory=dict)


class DataSource(Strict):
    """One dataset: exactly one of a local `path`, a Hub id, the embedded `world`, or a file of an
    upstream stage's artifact (`stage` + `file`)."""

    path: str | None = None
    hub: str | None = None
    world: Literal["corpus", "sft", "qa_train", "qa_eval", "preference_train",
                   "preference_eval"] | None = None
    stage: str | None = None
    file: str | None = None
    subset: str | None = None
    split: str = "train"
    max_samples: int | None = Field(default=None, gt=0)
    weight: float = Field(default=1.0, gt=0)
    columns: dict[str, str] = Field(default_factory=dict)
    format: str = "auto"
    label_column: str = "label"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        if isinstance(value, str):
            if value.startswith("world:"):
                return {"world": value.split(":", 1)[1]}
            if value.startswith("hub:"):
                return {"hub": value.split(":", 1)[1]}
            return {"path": value}
        return value

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [k for k in ("path", "hub", "world", "stage") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a data source needs exactly one of path, hub, world, stage "
                             f"(got {', '.join(given) or 'none'})")
        if self.stage is not None and not self.file:
            raise ValueError("a `stage` data source also needs `file` (e.g. sft, preference, kto)")
        return self

    def describe(self) -> str:
        if self.path:
            return self.path
        if self.hub:
            return f"hub:{self.hub}"
        if self.world:
            return f"world:{self.world}"
        return f"{self.stage}/{self.file}"


class DataSpec(Strict):
    """Training data (a mixture of weighted sources) and an optional evaluation set."""

    train: list[DataSource]
    eval: list[DataSource] = Field(default_factory=list)
    # When no eval source is given, hold out this share of the training rows.
    eval_fraction: float = Field(default=0.0, ge=0, lt=1)
    on_error: Literal["fail", "drop"] = "fail"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        if isinstance(value, (str, list)) or (isinstance(value, dict) and "train" not in value
                                              and not (set(value) & {"eval", "eval_fraction", "on_error"})):
            value = {"train": value}
        if isinstance(value, dict):
            value = dict(value)
            for key in ("train", "eval"):
                if key in value and not isinstance(value[key], list):
                    value[key] = [value[key]]
        return value


class LoraSpec(Strict):
    r: int = Field(default=16, gt=0)
    alpha: int = Field(default=32, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"


class QuantSpec(Strict):
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class MethodSpec(Strict):
    """How the stage tunes the model: which parameters train, and in what form."""

    type: Literal["full", "freeze", "lora", "qlora", "ptuning", "prefix"] = "full"
    # freeze: train only the top N decoder layers (and the final norm / head).
    trainable_layers: int = Field(default=2, gt=0)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    quantization: QuantSpec = Field(default_factory=QuantSpec)
    # ptuning / prefix: virtual tokens prepended to every sequence.
    num_virtual_tokens: int = Field(default=8, gt=0)
    encoder_hidden_size: int = Field(default=128, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        return {"type": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _settings_match_type(self):
        """Settings that change what trains, given to a method that ignores them, are
        contradictions (a recipe that quantises but does not use qlora, or freezes layers but
        tunes all of them). Adapter sizes (lora, virtual tokens) may be shared by several
        methods' stages, so they are not refused."""
        for key, types_ in METHOD_SETTINGS.items():
            if key in self.model_fields_set and self.type not in types_:
                raise ValueError(f"`{key}` is a setting of method {' / '.join(types_)}, but the "
                                 f"method is {self.type}; remove `{key}` or change `type`")
        return self


# Method settings and the method types they belong to.
METHOD_SETTINGS = {"quantization": ("qlora",), "trainable_layers": ("freeze",)}


class PushSpec(Strict):
    repo_id: str
    private: bool = False
    revision: str | None = None
    merged: bool = False  # push `align export`'s standalone model instead of the adapter


class Stage(Strict):
    kind: str  # a registered stage kind (align.kinds)
    from_: list[str] = Field(default_factory=list, alias="from")
    data: DataSpec | None = None
    method: MethodSpec = Field(default_factory=MethodSpec)
    args: dict[str, Any] = Field(default_factory=dict)
    # Stop when the eval loss has not improved for this many evaluations (needs eval data).
    early_stopping_patience: int | None = Field(default=None, gt=0)
    # Kind-specific settings that are not TRL config fields (e.g. the IDK builder, evaluation).
    options: dict[str, Any] = Field(default_factory=dict)
    push_to_hub: PushSpec | None = None
    # Keep the last Trainer checkpoint in the finished artifact (`<stage>/last_checkpoint/`).
    keep_checkpoints: bool = False

    @field_validator("kind")
    @classmethod
    def _registered(cls, value):
        if value not in KINDS:
            hint = difflib.get_close_matches(value, list(KINDS), n=1)
            extra = f"; did you mean '{hint[0]}'?" if hint else ""
            raise ValueError(f"unknown stage kind{extra} Kinds: {', '.join(KINDS)}")
        return value

    @field_validator("from_", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        if value is None:
            return []
        return [value] if isinstance(value, str) else value


class Recipe(Strict):
    name: str
    description: str = ""
    run_dir: str | None = None
    seed: int = 42
    accelerate: str = "cpu"
    model: ModelSpec = Field(default_factory=ModelSpec)
    # Settings of the embedded world (used by `world:` data sources and the tiny model).
    world: dict[str, Any] = Field(default_factory=dict)
    stages: dict[str, Stage]

    # Filled in by load_recipe, not read from YAML.
    source: str = Field(default="<recipe>", exclude=True)
    base_dir: str = Field(default=".", exclude=True)

    def order(self) -> list[str]:
        return topological_order(self)

    def resolve_path(self, path: str) -> Path:
        """Relative data paths are relative to the recipe file, so recipes travel with data."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p

    def output_dir(self) -> Path:
        return Path(self.run_dir or Path("runs") / self.name)


# ---------------------------------------------------------------------------------------------
# Loading and overrides


class RecipeLoader(yaml.SafeLoader):
    """Safe YAML that reads `1e-4` as a number. PyYAML follows YAML 1.1, where a float needs a dot
    (`1.0e-4`), so the way learning rates are usually written would arrive as a string."""


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A YAML mapping that gives a key twice (the second would silently replace the first)."""


def _construct_mapping_refusing_duplicates(loader, node, deep=False):
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges are overrides by design
            key = loader.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # an unhashable key: SafeLoader reports it itself
            if key in seen:
                first = seen[key]
                raise DuplicateKeyError(
                    "while constructing a mapping", node.start_mark,
                    f"key '{key}' is given twice (first at line {first.line + 1}); the second "
                    "would silently replace the first", key_node.start_mark)
            seen[key] = key_node.start_mark
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


RecipeLoader.construct_mapping = _construct_mapping_refusing_duplicates

RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError(f"override '{text}' is not of the form key.path=value "
                          "(e.g. stages.sft.args.learning_rate=1e-4)")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise RecipeError(f"override '{text}' has an empty key")
    return path, coerce_scalar(raw.strip())


def coerce_scalar(raw: str) -> Any:
    """'1e-4' -> 1e-4, '3' -> 3, 'true' -> True, '[a, b]' -> list; anything else stays a string."""
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    try:
        return yaml.load(raw, RecipeLoader) if raw else ""
    except yaml.YAMLError:
        return raw


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, key in enumerate(path[:-1]):
            if not isinstance(node.get(key), dict):
                if key in node and node[key] is not None:
                    where = ".".join(path[: i + 1])
                    raise RecipeError(f"override '{text}': '{where}' is not a mapping")
                node[key] = {}
            node = node[key]
        node[path[-1]] = value
    return data


def load_yaml(path: Path) -> dict:
    if not path.exists():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        data = yaml.load(read_recipe_text(path), RecipeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if isinstance(exc, DuplicateKeyError):
            raise RecipeError(f"{path}: duplicate key{where}: {problem}. Give each key "
                              "once.") from None
        if isinstance(exc, yaml.constructor.ConstructorError):
            raise RecipeError(f"{path}: unsupported YAML tag{where}: {problem}. Recipes are plain "
                              "YAML (loaded safely: tags that build Python objects are refused); "
                              "remove the tag.") from None
        raise RecipeError(f"{path}: YAML syntax error{where}: {problem}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping with `name` and `stages`")
    return data


def read_recipe_text(path: Path) -> str:
    """The recipe's text: a regular file, UTF-8 (a leading byte-order mark is allowed)."""
    if not path.is_file():
        what = "a directory" if path.is_dir() else "not a regular file"
        raise RecipeError(f"{path}: the recipe path is {what}; give the path of a recipe YAML "
                          "file.")
    try:
        return read_text(path)
    except DataError as exc:
        raise RecipeError(f"{path}: line {exc.row}: {exc.reason}.") from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load, override and validate a recipe (structure, references, stage args)."""
    path = Path(path)
    data = apply_overrides(load_yaml(path), overrides or [])
    data.setdefault("name", path.stem)
    recipe = build_recipe(data, source=str(path))
    recipe.base_dir = str(path.resolve().parent)
    return recipe


HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def check_repo_id(repo_id: str) -> None:
    if not isinstance(repo_id, str) or not HUB_ID.match(repo_id) or ".." in repo_id \
            or "--" in repo_id:
        raise AlignError(f"'{repo_id}' is not a Hub repo id: use owner/name (your user or "
                         "organisation, a slash, then the repo name; letters, digits, '-', '_', "
                         "'.').")


HUB_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")


def check_no_secrets(data: Any, source: str, path: tuple = ()) -> None:
    """A Hub token in a recipe would be copied into manifests and model cards: refuse it."""
    if isinstance(data, dict):
        for key, value in data.items():
            check_no_secrets(value, source, (*path, str(key)))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            check_no_secrets(value, source, (*path, str(i)))
    elif isinstance(data, str) and HUB_TOKEN.search(data):
        raise RecipeError(f"{source}: '{'.'.join(path)}' holds what looks like a Hugging Face "
                          "token. Recipes are copied into artifacts and model cards; give the "
                          "token through the HF_TOKEN environment variable or `hf auth login`.")


def build_recipe(data: dict, source: str = "<recipe>") -> Recipe:
    check_no_secrets(data, source)
    check_numbers(data, source)
    check_keys(data, Recipe, [], source)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(exc, source)) from None
    recipe.source = source
    check_stage_names(recipe)
    check_references(recipe)
    check_world_settings(recipe)
    for name, stage in recipe.stages.items():
        check_stage_args(recipe, name, stage)
        check_stage_needs(recipe, name, stage)
        check_data_formats(recipe, name, stage)
        check_stage_options(recipe, name, stage)
    check_run_dir(recipe)
    check_base_model(recipe)
    return recipe


# ---------------------------------------------------------------------------------------------
# Structural checks


def _model_of(annotation) -> type[BaseModel] | None:
    """The pydantic model a field holds (directly, in a list/dict, or in an Optional)."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType, list, dict):
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found:
                return found
        return None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _field_names(model: type[BaseModel]) -> dict[str, str]:
    names = {}
    for name, info in model.model_fields.items():
        if info.exclude:
            continue
        names[info.alias or name] = name
    return names


def check_keys(data: Any, model: type[BaseModel], path: list[str], source: str) -> None:
    """Unknown keys anywhere are errors that name the key path and the nearest valid key."""
    if not isinstance(data, dict):
        return
    names = _field_names(model)
    for key, value in data.items():
        if key not in names and key in TRL_CLI_KEYS:
            where = ".".join([*path, str(key)])
            raise RecipeError(f"{source}: '{where}' is a TRL command-line key; in an align "
                              f"recipe {TRL_CLI_KEYS[key]}.")
        if key not in names:
            suggestion = difflib.get_close_matches(str(key), list(names), n=1, cutoff=0.5)
            hint = f" Did you mean '{suggestion[0]}'?" if suggestion else ""
            where = ".".join([*path, str(key)])
            raise RecipeError(f"{source}: unknown key '{where}'.{hint} Valid keys here: "
                              f"{', '.join(sorted(names))}.")
        annotation = model.model_fields[names[key]].annotation
        sub = _model_of(annotation)
        if sub is None:
            continue
        origin = typing.get_origin(annotation)
        if origin is dict and isinstance(value, dict):
            for k, v in value.items():
                check_keys(v, sub, [*path, key, str(k)], source)
        elif key == "data" and isinstance(value, list):  # data: [a.jsonl, {world: sft}]
            for i, v in enumerate(value):
                check_keys(v, DataSource, [*path, key, str(i)], source)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                check_keys(v, sub, [*path, key, str(i)], source)
        elif key == "data" and isinstance(value, dict) and "train" not in value:
            check_keys(value, DataSource, [*path, key], source)
        else:
            check_keys(value, sub, [*path, key], source)


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "str", "list[", "dict[")))
        value = err.get("input")
        shown = f" (got {value!r})" if not isinstance(value, (dict, list)) else ""
        lines.append(f"'{loc}': {err['msg']}{shown}")
    more = f" (and {len(exc.errors()) - 5} more)" if len(exc.errors()) > 5 else ""
    return f"{source}: invalid recipe: " + "; ".join(lines) + more + "."


def check_references(recipe: Recipe) -> None:
    names = list(recipe.stages)
    for name, stage in recipe.stages.items():
        for upstream in stage.from_:
            if upstream not in recipe.stages:
                hint = difflib.get_close_matches(upstream, names, n=1)
                extra = f" Did you mean '{hint[0]}'?" if hint else ""
                raise RecipeError(f"{recipe.source}: stage '{name}' has from: '{upstream}', but "
                                  f"the recipe has no stage of that name.{extra} Stages: "
                                  f"{', '.join(names)}.")
        if stage.data:
            for src in [*stage.data.train, *stage.data.eval]:
                if src.stage and src.stage not in stage.from_:
                    raise RecipeError(f"{recipe.source}: stage '{name}' reads data from stage "
                                      f"'{src.stage}', which must also be listed in its `from`.")
    topological_order(recipe)


def topological_order(recipe: Recipe) -> list[str]:
    """Stages in dependency order, recipe order among independent ones; cycles are errors."""
    done: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            cycle = trail[trail.index(name):] + [name]
            raise RecipeError(f"{recipe.source}: the stages form a cycle: {' -> '.join(cycle)}. "
                              "A stage's `from` must name stages that run before it.")
        state[name] = "active"
        for upstream in recipe.stages[name].from_:
            visit(upstream, [*trail, name])
        state[name] = "done"
        done.append(name)

    for name in recipe.stages:
        visit(name, [])
    return done


# ---------------------------------------------------------------------------------------------
# Stage args against the TRL config classes


def accepts(annotation, value) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is Any or annotation is typing.Any:
        return True
    if origin in (Union, types.UnionType):
        return any(accepts(a, value) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if origin is Literal:
        return value in typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, __import__("enum").Enum):
        return value in [m.value for m in annotation] or isinstance(value, annotation)
    return True  # types we cannot check cheaply are left to the config class


def _list_element(annotation):
    """The element type of a `list[X]` (or `list[X] | None`) field that takes no scalar."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _list_element(args[0]) if len(args) == 1 else None
    if origin is list:
        args = typing.get_args(annotation)
        return args[0] if args else Any
    return None


# Keys of TRL's command line (`trl sft --use_peft ...`, its YAML configs) and where align takes them.
TRL_CLI_KEYS = {
    "use_peft": "the tuning method is the stage's `method:` block (method: lora, or "
                "method: {type: lora, lora: {r: 16, alpha: 32}})",
    "lora_r": "LoRA's rank is `method: {type: lora, lora: {r: ...}}` on the stage",
    "lora_alpha": "LoRA's alpha is `method: {type: lora, lora: {alpha: ...}}` on the stage",
    "lora_dropout": "LoRA's dropout is `method: {type: lora, lora: {dropout: ...}}` on the stage",
    "lora_target_modules": "LoRA's target modules are `method: {type: lora, lora: "
                           "{target_modules: [...]}}` on the stage",
    "load_in_4bit": "4-bit training is `method: qlora` on the stage (quantisation settings in "
                    "`method: {type: qlora, quantization: {...}}`)",
    "load_in_8bit": "align quantises for QLoRA only (4-bit): `method: qlora` on the stage",
    "bnb_4bit_quant_type": "it is `method: {type: qlora, quantization: {quant_type: nf4}}`",
    "use_bnb_nested_quant": "it is `method: {type: qlora, quantization: {double_quant: true}}`",
    "model_name_or_path": "the model is the recipe's top-level `model: {name_or_path: ...}` "
                          "(later stages start from the stage named in `from:`)",
    "model_revision": "it is the recipe's top-level `model: {revision: ...}`",
    "torch_dtype": "the dtype is the recipe's top-level `model: {dtype: bfloat16}`",
    "dtype": "the dtype is the recipe's top-level `model: {dtype: bfloat16}`",
    "trust_remote_code": "it is the recipe's top-level `model: {trust_remote_code: true}`",
    "attn_implementation": "it is the recipe's top-level `model: {attn_implementation: ...}`",
    "dataset_name": "datasets are the stage's `data:` block (data: {train: {hub: org/name}})",
    "dataset_train_split": "it is the source's `split:` in the stage's `data:` block",
    "dataset_test_split": "eval data is `data: {eval: ...}` or `data: {eval_fraction: 0.05}`",
}


def _type_name(annotation) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def check_stage_args(recipe: Recipe, name: str, stage: Stage) -> None:
    cls = get_kind(stage.kind).config_class()  # None: a kind set by `options` only
    if cls is None:
        if stage.args:
            raise RecipeError(f"{recipe.source}: stages.{name}.args: a {stage.kind} stage takes "
                              "no `args`; its settings go in `options`.")
        return
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in stage.args.items():
        where = f"stages.{name}.args.{key}"
        if key == "logging_dir":
            raise RecipeError(f"{recipe.source}: '{where}' is set by align: with `report_to: "
                              "tensorboard` the event files go to <run_dir>/<stage>/logs/; "
                              "remove it.")
        if key in RESERVED_ARGS:
            raise RecipeError(f"{recipe.source}: '{where}' is set by align (the run directory and "
                              "resumption are managed per stage); remove it.")
        if key not in fields and key in TRL_CLI_KEYS:
            raise RecipeError(f"{recipe.source}: '{where}' is a TRL command-line key; in an "
                              f"align recipe {TRL_CLI_KEYS[key]}.")
        if key not in fields:
            hint = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            extra = f" Did you mean '{hint[0]}'?" if hint else ""
            raise RecipeError(f"{recipe.source}: unknown key '{where}': {cls.__name__} has no "
                              f"field '{key}'.{extra}")
        if key == "report_to":
            check_report_to(value, where, recipe.source)
        annotation = hints.get(key, fields[key].type)
        element = _list_element(annotation)
        if element is not None and not isinstance(value, (list, tuple)) \
                and accepts(element, value):
            stage.args[key] = value = [value]  # TRL's spelling: a scalar where a list is taken
        if not accepts(annotation, value):
            raise RecipeError(f"{recipe.source}: '{where}' must be {_type_name(annotation)}, "
                              f"got {value!r} ({type(value).__name__}).")
    check_arg_values(cls, stage.args, f"stages.{name}.args", recipe.source)
    # Config classes of align's own (PPOConfig) also check values that depend on each other.
    validate_args = getattr(cls, "validate_args", None)
    if validate_args is not None:
        try:
            validate_args(stage.args, f"stages.{name}.args", recipe.source)
        except AlignError as exc:
            raise RecipeError(str(exc)) from None
    if _is_training_arguments(cls):
        # Devices are the run's business, not validation's.
        build_stage_config(cls, {**trainer_args(recipe, stage), "use_cpu": True},
                           f"stages.{name}.args", recipe.source)


def check_stage_needs(recipe: Recipe, name: str, stage: Stage) -> None:
    """What the stage's kind needs: data, a tuning method it supports, an upstream model."""
    src, kind = recipe.source, get_kind(stage.kind)
    if kind.needs_data and stage.data is None:
        raise RecipeError(f"{src}: stage '{name}' (kind {stage.kind}) needs a `data` block.")
    if not kind.methods and stage.method.type != "full":
        raise RecipeError(f"{src}: stages.{name}.method: a {stage.kind} stage trains nothing; "
                          "remove `method`.")
    if kind.methods and stage.method.type not in kind.methods:
        raise RecipeError(f"{src}: stages.{name}.method: {stage.method.type} is not supported by "
                          f"{stage.kind} stages (they take {', '.join(kind.methods)}).")
    if stage.data is not None and not stage.data.eval and stage.data.eval_fraction == 0:
        if stage.early_stopping_patience:
            raise RecipeError(f"{src}: stages.{name}.early_stopping_patience needs eval data: add "
                              "data.eval or data.eval_fraction, or remove it.")
        if stage.args.get("eval_strategy", "no") != "no":
            raise RecipeError(f"{src}: stages.{name}.args.eval_strategy is "
                              f"'{stage.args['eval_strategy']}' but the stage has no eval data: "
                              "add data.eval or data.eval_fraction, or remove it.")
    model_inputs = [u for u in stage.from_ if recipe.stages[u].kind in model_kinds()]
    if kind.needs_from and not model_inputs:
        # These start from a trained policy; starting from the raw base is almost always a
        # mistake (the reference model would be the base).
        raise RecipeError(f"{src}: stage '{name}' (kind {stage.kind}) needs `from:` naming the "
                          "stage whose model it starts from (usually the sft stage).")
    for needed in kind.needs_kinds:
        if not any(recipe.stages[u].kind == needed for u in stage.from_):
            raise RecipeError(f"{src}: stage '{name}' (kind {stage.kind}) needs `from:` to name "
                              f"a stage of kind {needed} as well, whose files it reads.")


# ---------------------------------------------------------------------------------------------
# Numbers, names and paths that are valid YAML but not valid settings (checked before any work)

# numpy (and so transformers' set_seed) accepts seeds in [0, 2**32 - 1].
SEED_MAX = 2**32 - 1


def _is_seed_key(key: str) -> bool:
    return key == "seed" or key.endswith("_seed")


def check_numbers(data: Any, source: str, path: tuple = ()) -> None:
    """Everywhere in the recipe (args, options, method, world, model): numbers are finite, and a
    seed (`seed`, `data_seed`, any `*_seed`) is a whole number numpy accepts."""
    if isinstance(data, dict):
        for key, value in data.items():
            where = (*path, str(key))
            if _is_seed_key(str(key)) and value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or \
                        not 0 <= value <= SEED_MAX:
                    raise RecipeError(f"{source}: '{'.'.join(where)}' must be a whole number from "
                                      f"0 to {SEED_MAX} (the seeds numpy accepts), got {value!r}.")
            check_numbers(value, source, where)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            check_numbers(value, source, (*path, str(i)))
    elif isinstance(data, float) and not math.isfinite(data):
        raise RecipeError(f"{source}: '{'.'.join(path)}' is {data!r}; settings must be finite "
                          "numbers.")


# Stage names become directory names in the run directory (and `<name>.partial`).
STAGE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
RESERVED_STAGE_NAMES = {"world", "con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                        *(f"lpt{i}" for i in range(10))}


def check_stage_names(recipe: Recipe) -> None:
    """At least one stage; each name a plain directory name that stays inside the run directory;
    no two names that only differ by case (they collide on macOS and Windows)."""
    src = recipe.source
    if not recipe.stages:
        raise RecipeError(f"{src}: 'stages' is empty; a recipe needs at least one stage.")
    folded: dict[str, str] = {}
    for name in recipe.stages:
        bad = not STAGE_NAME.match(name) or ".." in name or name.endswith((".", ".partial")) \
            or len(name) > 100
        if bad:
            raise RecipeError(f"{src}: stage name 'stages.{name}' is not allowed: stage names "
                              "become directories in the run directory, so use letters, digits, "
                              "'_', '-' and single dots only (no '/', '\\', '..', spaces, leading "
                              "dot, or '.partial' ending).")
        if name.lower() in RESERVED_STAGE_NAMES:
            raise RecipeError(f"{src}: stage name 'stages.{name}' is reserved (the run directory's "
                              "`world/` or a Windows device name); rename the stage.")
        other = folded.get(name.casefold())
        if other is not None:
            raise RecipeError(f"{src}: stages '{other}' and '{name}' differ only by case; their "
                              "directories would collide on macOS and Windows. Rename one.")
        folded[name.casefold()] = name


def _is_training_arguments(cls) -> bool:
    try:
        from transformers import TrainingArguments
    except ImportError:
        return False
    return isinstance(cls, type) and issubclass(cls, TrainingArguments)


# Trainer defaults that suit align's per-stage directories; any of them can be set in `args`.
TRAINER_DEFAULTS = dict(
    logging_steps=10, save_strategy="steps", save_steps=50, save_total_limit=2,
    report_to="none", activation_checkpointing=False, max_grad_norm=1.0,
    dataloader_num_workers=0, disable_tqdm=False,
)


def trainer_args(recipe: Recipe, stage: Stage, has_eval: bool | None = None,
                 defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """The arguments a Trainer stage builds its config class from: align's defaults, the stage
    module's `defaults`, the evaluation schedule, then the recipe's `args`. Validation builds the
    config from them too (`build_stage_config`); the stage adds its devices."""
    args: dict[str, Any] = {**TRAINER_DEFAULTS, **(defaults or {}), "seed": recipe.seed}
    if has_eval is None:
        has_eval = stage.data is not None and (bool(stage.data.eval) or stage.data.eval_fraction > 0)
    if has_eval:
        args.update(eval_strategy="steps", eval_steps=args["save_steps"])
    if stage.early_stopping_patience and has_eval:
        args.update(load_best_model_at_end=True, metric_for_best_model="eval_loss",
                    greater_is_better=False)
    args.update(stage.args)
    if "gradient_checkpointing" in stage.args:
        args.pop("activation_checkpointing", None)
    if args.get("eval_strategy") not in (None, "no") and "eval_steps" not in stage.args:
        args["eval_steps"] = args.get("save_steps", 50)
    return args


def build_stage_config(cls, args: dict[str, Any], where: str, source: str):
    """Instantiate the stage's real config class (TRL's or transformers') with its args, so every
    check the class makes (enum names, settings that contradict each other) runs now rather than
    when the stage starts. No files are written: output_dir names a directory never created."""
    # transformers and torch are imported here and in _without_devices, on use: every CLI
    # command imports this module, and they cost it seconds.
    from transformers.utils import logging as hf_logging

    given = {k: v for k, v in args.items() if k not in RESERVED_ARGS}
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    logging.disable(logging.WARNING)
    environ = dict(os.environ)
    try:
        with _process_state_kept():
            return _without_devices(cls)(
                output_dir=os.path.join(os.sep, "nonexistent", "align-validate"), **given)
    except Exception as exc:  # the classes raise ValueError, TypeError, KeyError, ...
        message = " ".join(str(exc).split()) or type(exc).__name__
        key = _blamed_key(message, given)
        at = f"{where}.{key}" if key else where
        raise RecipeError(f"{source}: '{at}': {cls.__name__} refuses these settings: "
                          f"{message}") from None
    finally:
        logging.disable(logging.NOTSET)
        hf_logging.set_verbosity(previous)
        if dict(os.environ) != environ:  # __post_init__ exports some settings for accelerate
            os.environ.clear()
            os.environ.update(environ)


def _without_devices(cls):
    """`cls` whose instances do not set up devices: TrainingArguments.__post_init__ otherwise
    resets accelerate's process-wide state and starts its own, which belongs to the stage."""
    import torch

    def _setup_devices(self):
        self._n_gpu = 0
        # GRPOConfig / RLOOConfig read world_size (1 without a distributed state) in __post_init__.
        self.distributed_state = None
        return torch.device("cpu")

    return type(cls.__name__, (cls,), {"_setup_devices": property(_setup_devices),
                                       "__module__": cls.__module__})


@contextlib.contextmanager
def _process_state_kept():
    """accelerate's shared process state exactly as it was, whatever the block does to it."""
    try:
        from accelerate.state import AcceleratorState, GradientState, PartialState
    except ImportError:
        yield
        return
    saved = [(c, dict(c._shared_state)) for c in (PartialState, AcceleratorState, GradientState)]
    try:
        yield
    finally:
        for c, state in saved:
            if c._shared_state != state:
                c._shared_state.clear()
                c._shared_state.update(state)


def _blamed_key(message: str, args: dict[str, Any]) -> str | None:
    """The arg a config class's message is about: named in it, or whose value it quotes."""
    named = [k for k in args
             if re.search(rf"(?<![A-Za-z0-9_]){re.escape(k)}(?![A-Za-z0-9_])", message)]
    if named:
        return max(named, key=len)
    for key, value in args.items():
        if isinstance(value, str) and value and value in message:
            return key
    return None


def _choices(field) -> list[str] | None:
    """The values a config field allows: its `choices` metadata, or the list its help text gives
    ("Possible values are: `'a'`, `'b'`.")."""
    choices = field.metadata.get("choices") if field.metadata else None
    if choices:
        return [str(c) for c in choices]
    help_text = (field.metadata or {}).get("help", "")
    found = re.search(r"Possible values are:(.*?)(?:\.\s|\.$|If )", help_text, re.S)
    if not found:
        return None
    values = re.findall(r"`'?([A-Za-z0-9_.-]+)'?`", found.group(1))
    return values or None


# Numeric args and what a trainer needs of them:
# (minimum, minimum allowed?, maximum, maximum allowed?)
POSITIVE = (0, False, None, False)
AT_LEAST_1 = (1, True, None, False)
NOT_NEGATIVE = (0, True, None, False)
FRACTION = (0, True, 1, True)
ARG_RANGES = {
    "learning_rate": POSITIVE, "num_train_epochs": POSITIVE, "adam_epsilon": POSITIVE,
    "logging_steps": POSITIVE, "save_steps": POSITIVE, "eval_steps": POSITIVE,
    "per_device_train_batch_size": AT_LEAST_1, "per_device_eval_batch_size": AT_LEAST_1,
    "gradient_accumulation_steps": AT_LEAST_1, "eval_accumulation_steps": AT_LEAST_1,
    "max_length": AT_LEAST_1, "max_prompt_length": AT_LEAST_1,
    "max_completion_length": AT_LEAST_1, "save_total_limit": AT_LEAST_1,
    "warmup_steps": NOT_NEGATIVE, "weight_decay": NOT_NEGATIVE, "max_grad_norm": NOT_NEGATIVE,
    "dataloader_num_workers": NOT_NEGATIVE, "beta": NOT_NEGATIVE,
    "desirable_weight": POSITIVE, "undesirable_weight": POSITIVE,
    "adam_beta1": (0, True, 1, False), "adam_beta2": (0, True, 1, False),
    "label_smoothing_factor": (0, True, 1, False), "label_smoothing": (0, True, 0.5, True),
    "warmup_ratio": FRACTION, "ld_alpha": FRACTION, "center_rewards_coefficient": NOT_NEGATIVE,
    "max_steps": (-1, True, None, False),
}


def _range_words(rule) -> str:
    lo, lo_ok, hi, hi_ok = rule
    if rule == POSITIVE:
        return "must be positive"
    if rule == AT_LEAST_1:
        return "must be at least 1"
    if rule == NOT_NEGATIVE:
        return "must not be negative"
    if lo == -1 and hi is None:
        return "must be -1 (train for num_train_epochs) or a positive number of steps"
    return (f"must be from {lo} ({'inclusive' if lo_ok else 'exclusive'}) to {hi} "
            f"({'inclusive' if hi_ok else 'exclusive'})")


def check_arg_values(cls, args: dict[str, Any], where: str, source: str) -> None:
    """Numbers in the ranges a trainer needs, and names among the values a field allows."""
    fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    for key, value in args.items():
        rule = ARG_RANGES.get(key)
        if rule and isinstance(value, (int, float)) and not isinstance(value, bool):
            lo, lo_ok, hi, hi_ok = rule
            bad = value < lo or (value == lo and not lo_ok) or \
                (hi is not None and (value > hi or (value == hi and not hi_ok)))
            if key == "max_steps" and value == 0:
                bad = True
            if bad:
                raise RecipeError(f"{source}: '{where}.{key}' {_range_words(rule)}, got {value}.")
        field = fields.get(key)
        allowed = _choices(field) if field is not None else None
        values = value if isinstance(value, list) else [value]
        if allowed and all(isinstance(v, str) for v in values):
            for v in values:
                if v not in allowed:
                    hint = difflib.get_close_matches(v, allowed, n=1, cutoff=0.6)
                    extra = f" Did you mean '{hint[0]}'?" if hint else ""
                    raise RecipeError(f"{source}: '{where}.{key}' is {v!r}, which {cls.__name__} "
                                      f"does not know.{extra} Allowed: {', '.join(allowed)}.")


def check_data_formats(recipe: Recipe, name: str, stage: Stage) -> None:
    """A data source's `format` is one align knows (named with its key path)."""
    if stage.data is None:
        return
    for part in ("train", "eval"):
        for i, src in enumerate(getattr(stage.data, part)):
            if src.format not in FORMATS:
                hint = difflib.get_close_matches(src.format, FORMATS, n=1, cutoff=0.6)
                extra = f" Did you mean '{hint[0]}'?" if hint else ""
                raise RecipeError(f"{recipe.source}: 'stages.{name}.data.{part}.{i}.format' is "
                                  f"{src.format!r} ({src.describe()}), not a dataset format "
                                  f"align knows.{extra} Formats: {', '.join(FORMATS)}.")


def data_key(stage: Stage, src: DataSource) -> str:
    """`data.train.0` / `data.eval.1`: where a source sits in its stage's block."""
    for part in ("train", "eval"):
        for i, candidate in enumerate(getattr(stage.data, part) if stage.data else []):
            if candidate is src:
                return f"data.{part}.{i}"
    return "data"


def check_stage_options(recipe: Recipe, name: str, stage: Stage) -> None:
    """A kind's `options`, checked by the function its registry entry names (idk: the probe;
    evaluate: the reference probe; grpo / rloo: the reward sources)."""
    try:
        get_kind(stage.kind).check_options(stage.options, f"stages.{name}.options", recipe.source)
    except AlignError as exc:
        raise RecipeError(str(exc) if recipe.source in str(exc) else
                          f"{recipe.source}: {exc}") from None


def check_world_settings(recipe: Recipe) -> None:
    """`world:` (and `model.tiny:`) build the embedded world's config; its numbers in range."""
    for where, settings in (("world", recipe.world),
                            ("model.tiny.world", recipe.model.tiny.get("world") or {})):
        if not isinstance(settings, dict):
            raise RecipeError(f"{recipe.source}: '{where}' must be a mapping of world settings.")
        try:
            config = WorldConfig(**settings)
        except TypeError as exc:
            raise RecipeError(f"{recipe.source}: invalid `world` settings ('{where}'): {exc}") from None
        for key in ("known_fraction", "sft_fraction", "eval_unknown_fraction"):
            value = getattr(config, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise RecipeError(f"{recipe.source}: invalid `world` settings: '{where}.{key}' must "
                                  f"be from 0 to 1, got {value!r}.")
        for key, least in (("n_entities", 1), ("preference_wrong_values", 1),
                           ("documents_per_row", 1), ("name_mentions", 0)):
            value = getattr(config, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise RecipeError(f"{recipe.source}: invalid `world` settings: '{where}.{key}' must "
                                  f"be a whole number of at least {least}, got {value!r}.")
        try:
            build_world(config)
        except ValueError as exc:  # settings each in range that no world can satisfy together
            raise RecipeError(f"{recipe.source}: invalid `world` settings ('{where}'): {exc}.") from None
    if recipe.model.name_or_path == "tiny":
        tiny = {k: v for k, v in recipe.model.tiny.items() if k != "world"}
        try:
            config = TinyConfig(**tiny)
        except TypeError as exc:
            raise RecipeError(f"{recipe.source}: invalid 'model.tiny' settings: {exc}") from None
        unset = {f.name for f in dataclasses.fields(TinyConfig) if f.default is None}
        for key, value in dataclasses.asdict(config).items():
            if key in unset and value is None:  # a setting whose absence means "no limit"
                continue
            if key not in ("seed", "world") and (isinstance(value, bool) or
                                                 not isinstance(value, int) or value < 1):
                raise RecipeError(f"{recipe.source}: 'model.tiny.{key}' must be a whole number of "
                                  f"at least 1, got {value!r}.")


def check_run_dir(recipe: Recipe) -> None:
    """The run directory can be created and written (found now, not after a stage trained); the
    default one, `runs/<name>`, stays under `runs/`. Each `push_to_hub.repo_id` is a repo id."""

    if recipe.run_dir is None and (not STAGE_NAME.match(recipe.name) or ".." in recipe.name):
        raise RecipeError(f"{recipe.source}: 'name' is {recipe.name!r}, and without `run_dir` the "
                          "run directory is runs/<name>: use letters, digits, '_', '-' and single "
                          "dots, or set `run_dir`.")
    for name, stage in recipe.stages.items():
        if stage.push_to_hub is not None:
            try:
                check_repo_id(stage.push_to_hub.repo_id)
            except AlignError as exc:
                raise RecipeError(f"{recipe.source}: 'stages.{name}.push_to_hub.repo_id': "
                                  f"{exc}") from None
    try:
        check_writable_dir(recipe.output_dir(), "the run directory")
    except AlignError as exc:
        raise RecipeError(f"{recipe.source}: 'run_dir': {exc}") from None


def check_base_model(recipe: Recipe) -> None:
    """A local base model is a directory with config.json and intact safetensors weights; its
    layer count fits the stages' methods."""
    name = recipe.model.name_or_path
    layers = None
    if name == "tiny":
        layers = int(recipe.model.tiny.get("num_hidden_layers", 4))
    else:
        local = recipe.resolve_path(name)
        looks_local = name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 \
            or "\\" in name
        if local.exists() or looks_local:
            try:
                check_local_model(local, "model.name_or_path")
            except AlignError as exc:
                raise RecipeError(f"{recipe.source}: {exc}") from None
            layers = model_layer_count(local)
    check_target_modules(recipe)
    if layers is None:
        return
    for stage_name, stage in recipe.stages.items():
        if stage.method.type == "freeze" and stage.method.trainable_layers > layers:
            raise RecipeError(f"{recipe.source}: 'stages.{stage_name}.method.trainable_layers' is "
                              f"{stage.method.trainable_layers}, but the model ({name}) has only "
                              f"{layers} layers; use at most {layers}.")


def check_target_modules(recipe: Recipe) -> None:
    """`method.lora.target_modules` of lora / qlora stages name modules the base model has (as
    PEFT matches them: the whole name, or its last dotted parts; a string is a regular
    expression, except "all-linear")."""
    stages = [(n, s) for n, s in recipe.stages.items() if s.method.type in ("lora", "qlora")
              and s.method.lora.target_modules != "all-linear"]
    if not stages:
        return
    name = recipe.model.name_or_path
    if name == "tiny":
        names = module_names(None)
    else:
        local = recipe.resolve_path(name)
        names = module_names(local) if local.is_dir() else None
    if not names:
        return
    for stage_name, stage in stages:
        targets = stage.method.lora.target_modules
        where = f"stages.{stage_name}.method.lora.target_modules"
        if isinstance(targets, str):
            try:
                found = any(re.fullmatch(targets, n) for n in names)
            except re.error as exc:
                raise RecipeError(f"{recipe.source}: '{where}' is {targets!r}, not a valid regular "
                                  f"expression ({exc}).") from None
            missing = [] if found else [targets]
        else:
            missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            leaves = sorted({n.rsplit(".", 1)[-1] for n in names if not n.rsplit(".", 1)[-1].isdigit()})
            hint = difflib.get_close_matches(missing[0], leaves, n=1)
            extra = f" Did you mean '{hint[0]}'?" if hint else ""
            raise RecipeError(f"{recipe.source}: '{where}' names {missing}, which the model "
                              f"({name}) does not have.{extra} Its modules: {', '.join(leaves)}.")

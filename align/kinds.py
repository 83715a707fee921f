"""The stage kinds: everything that makes a kind what it is, declared once.

Validation (recipe.py, validate.py), the stage hash, the runner, the accelerate profile check,
the stages themselves and the Hub card all read a kind's `StageKind` here; nothing else keeps a
table of kinds. Adding a kind is one `register(StageKind(...))` and one `run(ctx)` function
(docs/architecture.md, "Adding a stage kind").

Config and trainer classes and run functions are named as `module:attr` strings and imported on
first use: importing TRL costs the CLI seconds, and the stage modules sit above this one.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Any, Callable, Literal

from align.errors import AlignError
from align.importing import import_object
from align.profiles import ALL_PROFILES

TUNING_METHODS = ("full", "freeze", "lora", "qlora")
ALL_METHODS = (*TUNING_METHODS, "ptuning", "prefix")


@dataclass(frozen=True)
class StageKind:
    name: str
    run: str | Callable                     # "module:function" or the function: run(ctx) -> Artifact
    card: str                               # what the model card calls the stage's work
    data: str | None                        # the `formats.TARGETS` layout its rows convert to
    produces: Literal["model", "data", "report"] = "model"
    config: str | None = None               # "module:Class" its `args` build (None: no args)
    trainer: str | None = None              # "module:Class" of the trainer, where one is used
    task: str = "causal-lm"                 # the model it produces: causal-lm or sequence-classification
    needs_from: bool = False                # must start from an upstream model stage (else the
                                            # recipe's base model is its start and reference)
    default_world: str | None = None        # world split read when the stage has no `data`
    methods: tuple[str, ...] = TUNING_METHODS  # tuning methods it accepts (empty: trains nothing)
    profiles: tuple[str, ...] = ALL_PROFILES  # accelerate profile classes it runs under
    profile_reason: str = ""                # why the others are refused
    reference: bool = False                 # measured against a reference model (the upstream)
    offers: tuple[str, ...] = ()            # files of its artifact later stages may read
    needs_kinds: tuple[str, ...] = ()       # kinds `from` must also name a stage of (its inputs)
    # "module:function(options, where, source)" checking the stage's `options` when the recipe
    # is validated (None: the stage reads its options itself, at run time).
    options: str | None = None

    @property
    def needs_data(self) -> bool:
        return self.data is not None and self.default_world is None

    @property
    def makes_model(self) -> bool:
        return self.produces == "model"

    def config_class(self):
        if self.config is None:
            return None
        if self.config.startswith("trl.experimental"):
            os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        return import_object(self.config, f"config class of stage kind '{self.name}'",
                             callable_=False)

    def trainer_class(self):
        if self.trainer is None:
            raise AlignError(f"stage kind '{self.name}' declares no trainer class.")
        if self.trainer.startswith("trl.experimental"):
            os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        return import_object(self.trainer, f"trainer of stage kind '{self.name}'")

    def check_options(self, options: dict, where: str, source: str = ""):
        """The checked options: what the kind's check returns (its config, defaults filled in,
        where it builds one), else None."""
        if self.options is not None:
            return import_object(self.options, f"options check of stage kind '{self.name}'")(
                options, where, source)
        return None

    def run_function(self) -> Callable[[Any], Any]:
        if callable(self.run):
            return self.run
        return import_object(self.run, f"stage kind '{self.name}'")


KINDS: dict[str, StageKind] = {}


def register(kind: StageKind) -> StageKind:
    """Declare a stage kind (replacing one of the same name, so a test or plugin may redefine)."""
    bad = [m for m in kind.methods if m not in ALL_METHODS]
    if bad:
        raise ValueError(f"stage kind '{kind.name}': unknown methods {bad}")
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> StageKind:
    try:
        return KINDS[name]
    except KeyError:
        hint = difflib.get_close_matches(name, list(KINDS), n=1)
        extra = f" Did you mean '{hint[0]}'?" if hint else ""
        raise AlignError(f"unknown stage kind '{name}'.{extra} Kinds: {', '.join(KINDS)}.") from None


def model_kinds(task: str | None = None) -> tuple[str, ...]:
    """Kinds whose artifact is a model later stages can start from (of `task` when given:
    "causal-lm" for the kinds whose model writes text)."""
    return tuple(name for name, kind in KINDS.items()
                 if kind.makes_model and task in (None, kind.task))


# -- the shipped kinds -------------------------------------------------------------------------

register(StageKind(
    name="pretrain", run="align.stages.sft:run", card="continued pre-training",
    data="language_modeling", config="trl:SFTConfig", trainer="trl:SFTTrainer",
    methods=ALL_METHODS))
register(StageKind(
    name="sft", run="align.stages.sft:run", card="supervised fine-tuning",
    data="sft", config="trl:SFTConfig", trainer="trl:SFTTrainer", methods=ALL_METHODS))
register(StageKind(
    name="idk", run="align.stages.idk:run", card="\"I don't know\" (honesty) data building",
    data="qa", produces="data", needs_from=True, default_world="qa_train", methods=(),
    offers=("sft", "preference", "kto", "rm", "prompts", "probe"),
    options="align.honesty.builder:check_probe_options"))
register(StageKind(
    name="rm", run="align.stages.rm:run", card="reward modelling", data="preference",
    config="trl:RewardConfig", trainer="trl:RewardTrainer", task="sequence-classification"))
register(StageKind(
    name="ppo", run="align.stages.ppo:run", card="PPO (RLHF against reward sources)",
    data="prompt_only", config="align.ppo.config:PPOConfig", reference=True,
    profiles=("single", "ddp"),
    profile_reason="align's PPO generates rollouts from the unwrapped policy and keeps its own "
                   "reference and value models and optimizer, which DeepSpeed and FSDP would "
                   "shard or replace"))
# GRPO and RLOO: TRL's trainers, align's reward sources (`options.rewards`), start model and reference.
register(StageKind(
    name="grpo", run="align.stages.rl:run", card="group relative policy optimisation (GRPO)",
    data="prompt_only", config="trl:GRPOConfig", trainer="trl:GRPOTrainer", reference=True,
    options="align.rewards.spec:check_rl_options"))
register(StageKind(
    name="rloo", run="align.stages.rl:run", card="REINFORCE leave-one-out (RLOO)",
    data="prompt_only", config="trl:RLOOConfig", trainer="trl:RLOOTrainer", reference=True,
    options="align.rewards.spec:check_rl_options"))
register(StageKind(
    name="dpo", run="align.stages.preference:run", card="direct preference optimisation (DPO)",
    data="preference", config="trl:DPOConfig", trainer="trl:DPOTrainer",
    reference=True))
register(StageKind(
    name="kto", run="align.stages.preference:run", card="Kahneman-Tversky optimisation (KTO)",
    data="unpaired", config="trl:KTOConfig", trainer="trl:KTOTrainer",
    reference=True))
register(StageKind(
    name="orpo", run="align.stages.preference:run", card="odds-ratio preference optimisation (ORPO)",
    data="preference", config="trl.experimental.orpo:ORPOConfig",
    trainer="trl.experimental.orpo:ORPOTrainer"))
register(StageKind(
    name="abstain", run="align.stages.abstain:run",
    card="abstention (refuses questions about names it never read, and answers only above a "
         "confidence threshold fitted on the honesty probe)",
    data=None, needs_from=True, methods=(), needs_kinds=("idk",),
    options="align.honesty.abstention:check_abstain_options"))
register(StageKind(
    name="evaluate", run="align.stages.evaluate:run", card="honesty evaluation",
    data="labelled_qa", produces="report", needs_from=True, default_world="qa_eval", methods=(),
    options="align.stages.evaluate:check_options"))

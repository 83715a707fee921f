"""What a stage sees: its recipe block, its inputs, its data, its directories.

A stage module only describes its training; everything shared (resolving inputs, reading and
converting data, choosing the starting model, Trainer defaults, writing the manifest on the
main process only) lives here.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align.artifacts import Artifact, Manifest, ModelRef, StageDirs, library_versions
from align.errors import AlignError, DataError
from align.data.lengths import PROMPTED_TARGETS
from align.recipe import MODEL_KINDS, DataSource, Recipe, Stage

# Trainer defaults that suit align's per-stage directories; any of them can be set in `args`.
TRAINER_DEFAULTS = dict(
    logging_steps=10, save_strategy="steps", save_steps=50, save_total_limit=2,
    report_to="none", activation_checkpointing=False, max_grad_norm=1.0,
    dataloader_num_workers=0, disable_tqdm=False,
)


@dataclass
class StageContext:
    recipe: Recipe
    name: str
    stage: Stage
    inputs: dict[str, Artifact]
    dirs: StageDirs
    config_hash: str
    base_model: str  # the recipe's base model, resolved (tiny built, local path or Hub id)
    resumed: bool = False
    dropped_rows: dict[str, int] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)

    # -- processes ---------------------------------------------------------------------------
    @property
    def state(self):
        return process_state()

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    def log(self, message: str) -> None:
        if self.is_main:
            print(f"[{self.name}] {message}", flush=True)

    # -- inputs --------------------------------------------------------------------------------
    def model_input(self) -> Artifact | None:
        """The upstream artifact this stage's model starts from (first model in `from`)."""
        for name in self.stage.from_:
            artifact = self.inputs[name]
            if artifact.manifest.kind in MODEL_KINDS and artifact.manifest.model:
                if artifact.manifest.model.task == "causal-lm":
                    return artifact
        return None

    def input_of_kind(self, kind: str) -> Artifact | None:
        for name in self.stage.from_:
            if self.inputs[name].manifest.kind == kind:
                return self.inputs[name]
        return None

    def root_model(self) -> str:
        upstream = self.model_input()
        if upstream and upstream.manifest.model.root:
            return upstream.manifest.model.root
        return self.recipe.model.name_or_path if self.recipe.model.name_or_path != "tiny" else "tiny"

    # -- data ----------------------------------------------------------------------------------
    def read_source(self, src: DataSource) -> tuple[str, list[dict]]:
        from align.data.sources import read_hub, read_local

        if src.path:
            path = self.recipe.resolve_path(src.path)
            return str(src.path), read_local(path)
        if src.hub:
            return f"hub:{src.hub}", read_hub(src.hub, src.subset, src.split)
        if src.world:
            path = world_dir(self.recipe) / f"{src.world}.jsonl"
            return f"world:{src.world}", read_local(path)
        artifact = self.inputs[src.stage]
        path = artifact.file(src.file)
        return f"{src.stage}/{src.file}", read_local(path)

    def rows(self, target: str, sources: list[DataSource] | None = None) -> list[dict]:
        """Rows of the stage's training sources, converted to `target` (a formats.TARGETS)."""
        from align.data.formats import convert_rows
        from align.data.sources import load_rows, mix

        spec = self.stage.data
        sources = spec.train if sources is None else sources
        parts = []
        for (name, rows), src in zip(load_rows(sources, self.read_source, self.recipe.seed), sources):
            result = convert_rows(rows, source=name, target=target, fmt=src.format,
                                  label_column=src.label_column, on_error=spec.on_error)
            if result.dropped:
                self.dropped_rows[name] = len(result.dropped)
                self.log(f"dropped {len(result.dropped)} malformed rows of {name} "
                         f"(first: {result.dropped[0]})")
            if result.identical:
                self.log(f"dropped {result.identical} pairs of {name} whose chosen and rejected "
                         "are identical")
            converted = result.rows
            if target in PROMPTED_TARGETS:
                converted = self.rows_that_fit(converted, len(rows), result.dropped, name)
            parts.append(converted)
        return mix(parts, self.recipe.seed)

    def rows_that_fit(self, converted: list[dict], n_source: int, problems, name: str) -> list[dict]:
        """Refuse (or drop) rows whose prompt alone reaches the stage's max_length."""
        from align.data.lengths import fit_prompts
        from align.recipe import config_class

        kept, dropped, limit = fit_prompts(converted, n_source, problems, self.load_tokenizer(),
                                           self.stage.args, config_class(self.stage.kind), name,
                                           self.stage.data.on_error,
                                           f"stages.{self.name}.args.max_length")
        if dropped:
            self.dropped_rows[name] = self.dropped_rows.get(name, 0) + dropped
            self.log(f"dropped {dropped} rows of {name} whose prompt reaches max_length {limit}")
        return kept

    def datasets(self, target: str):
        """(train, eval or None) as `datasets.Dataset`, eval from sources or a seeded split."""
        from datasets import Dataset

        spec = self.stage.data
        train = self.rows(target)
        evaluation = self.rows(target, spec.eval) if spec.eval else None
        if evaluation is None and spec.eval_fraction > 0:
            order = list(range(len(train)))
            random.Random(self.recipe.seed).shuffle(order)
            n_eval = max(1, math.floor(len(train) * spec.eval_fraction))
            evaluation = [train[i] for i in order[:n_eval]]
            train = [train[i] for i in order[n_eval:]]
        if not train:
            raise DataError(f"stage '{self.name}' has no training rows left")
        return Dataset.from_list(train), (Dataset.from_list(evaluation) if evaluation else None)

    # -- models --------------------------------------------------------------------------------
    def start_reference(self) -> tuple[str, str | None]:
        """(loadable path or id of the starting weights, artifact-relative base for adapters)."""
        upstream = self.model_input()
        if upstream is None:
            return self.base_model, self.base_model
        rel = os.path.relpath(upstream.path, self.dirs.final)
        return str(upstream.path), rel

    def load_tokenizer(self):
        upstream = self.model_input()
        return self.load_tokenizer_of(upstream) if upstream else self._tokenizer(self.base_model)

    def load_tokenizer_of(self, artifact: Artifact):
        return self._tokenizer(artifact.path / (artifact.manifest.tokenizer or "model"))

    def _tokenizer(self, ref):
        from align.modeling import load_tokenizer

        return load_tokenizer(ref, self.recipe.model.trust_remote_code)

    def load_start_model(self, task: str = "causal-lm", quantized: bool = False):
        """The upstream model exactly (adapters merged); 4-bit when the method is qlora."""
        from align.modeling import (load_artifact_model, load_full, quantization_config,
                                    torch_dtype)

        model_spec = self.recipe.model
        common = dict(task=task, trust_remote_code=model_spec.trust_remote_code)
        if model_spec.attn_implementation:
            common["attn_implementation"] = model_spec.attn_implementation
        dtype = torch_dtype(model_spec.dtype)
        upstream = self.model_input()
        if not quantized:
            if upstream is None:
                return load_full(self.base_model, dtype=dtype, revision=model_spec.revision, **common)
            return load_artifact_model(upstream, dtype=dtype, **common)
        # QLoRA quantises from full weights on disk: an adapter upstream is merged first.
        source = self.base_model
        if upstream is not None:
            if upstream.manifest.model.type == "full":
                source = str(upstream.model_path())
            else:
                merged = self.dirs.partial / "base"
                if not (merged / "config.json").exists() and self.is_main:
                    load_artifact_model(upstream, dtype=dtype, **common).save_pretrained(merged)
                self.state.wait_for_everyone()
                source = str(merged)
        q = quantization_config(self.stage.method)
        return load_full(source, dtype=q.bnb_4bit_compute_dtype, quantization=q, **common)

    def adapter_base(self) -> str:
        """The `base` an adapter produced by this stage is applied to."""
        if self.stage.method.type == "qlora" and (self.dirs.partial / "base").exists():
            return "base"
        return self.start_reference()[1]

    # -- training arguments ------------------------------------------------------------------
    def training_args(self, config_cls, has_eval: bool = False, **stage_defaults):
        import torch

        args: dict[str, Any] = {**TRAINER_DEFAULTS, **stage_defaults}
        args["seed"] = self.recipe.seed
        if not torch.cuda.is_available():
            args["use_cpu"] = True
            if self.state.num_processes > 1:
                args["ddp_backend"] = "gloo"  # NCCL needs GPUs
        if has_eval:
            args.update(eval_strategy="steps", eval_steps=args["save_steps"])
        if self.stage.early_stopping_patience:
            if not has_eval:
                raise AlignError(f"stages.{self.name}.early_stopping_patience needs eval data "
                                 "(data.eval or data.eval_fraction).")
            args.update(load_best_model_at_end=True, metric_for_best_model="eval_loss",
                        greater_is_better=False)
        args.update(self.stage.args)
        if "gradient_checkpointing" in self.stage.args:  # the older name still works
            args.pop("activation_checkpointing", None)
        if args.get("eval_strategy") not in (None, "no") and "eval_steps" not in self.stage.args:
            args["eval_steps"] = args.get("save_steps", 50)
        return config_cls(output_dir=str(self.dirs.checkpoints), **args)

    def callbacks(self) -> list:
        from transformers import EarlyStoppingCallback

        from align.stages.callbacks import NonFiniteLossCallback

        out = [NonFiniteLossCallback()]
        if self.stage.early_stopping_patience:
            out.append(EarlyStoppingCallback(self.stage.early_stopping_patience))
        return out

    def resume_checkpoint(self) -> str | None:
        last = self.dirs.last_checkpoint()
        if last is not None:
            self.log(f"resuming from {last.name}")
        return str(last) if last else None

    def replica_check(self, model, **state) -> dict:
        """World size; whether every data-parallel replica ended with the same weights; and,
        given `state` (step reached, running moments, ...), whether every rank agrees on it.

        Each rank hashes its trainable parameters and its `state`; the hashes are gathered on
        every rank (a collective: every rank must call it). Sharded profiles (ZeRO-3, FSDP) hold
        different shards on each rank, so `replicas_identical` is None there.
        """
        import hashlib

        from accelerate.utils import gather_object

        digest = hashlib.sha256()
        for name, p in sorted(model.named_parameters(), key=lambda item: item[0]):
            if p.requires_grad:
                digest.update(name.encode())
                local = p.detach()
                local = local.to_local() if hasattr(local, "to_local") else local  # FSDP2: DTensor
                digest.update(local.float().cpu().numpy().tobytes())
        mine = [(digest.hexdigest()[:16],
                 hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()[:16])]
        n = self.state.num_processes
        everyone = gather_object(mine) if n > 1 else mine
        out = {"world_size": n,
               "replicas_identical": None if is_sharded(self.state) else
               len({weights for weights, _ in everyone}) == 1}
        if state:
            out["ranks_agree"] = len({agreed for _, agreed in everyone}) == 1
        return out

    def save_trainer_model(self, trainer, tokenizer) -> Path:
        """The trained model (or adapter) into `<partial>/model`. `save_model` runs on every
        rank: under ZeRO-3 and FSDP it gathers the shards (a collective); the main process
        writes."""
        out = self.dirs.partial / "model"
        trainer.save_model(str(out))
        if self.is_main:
            tokenizer.save_pretrained(str(out))
        self.state.wait_for_everyone()
        return out

    @staticmethod
    def trainer_decisions(trainer) -> dict:
        """What every rank must have decided alike: where training stopped (early stopping
        included) and which checkpoint was best (the eval metrics are gathered over ranks)."""
        s = trainer.state
        best = s.best_model_checkpoint
        return {"global_step": s.global_step, "best_metric": s.best_metric,
                "best_checkpoint": os.path.basename(best) if best else None}

    # -- finishing -----------------------------------------------------------------------------
    def finish(self, *, model: ModelRef | None = None, tokenizer: str | None = None,
               files: dict[str, str] | None = None, metrics: dict | None = None,
               history: list[dict] | None = None) -> Artifact | None:
        """Write the manifest (main process only, last) and move the artifact into place.

        `history` is the Trainer's log history; it is kept as `history.jsonl` so the run report
        can draw the stage's training curves after the checkpoints are gone."""
        from align.artifacts import read_manifest

        self.state.wait_for_everyone()
        if self.is_main:
            metrics = dict(metrics or {})
            files = dict(files or {})
            if history:
                write_jsonl(self.dirs.partial / HISTORY_FILE, history)
                files["history"] = HISTORY_FILE
            if self.dropped_rows:
                metrics["dropped_rows"] = self.dropped_rows
            manifest = Manifest(
                name=self.name, kind=self.stage.kind, status="complete",
                config_hash=self.config_hash, config=stage_config(self.recipe, self.name),
                inputs={n: a.manifest.config_hash for n, a in self.inputs.items()},
                model=model, tokenizer=tokenizer, files=files or {}, metrics=metrics,
                versions=library_versions(), started_at=self.started_at)
            self.dirs.commit(manifest)
        self.state.wait_for_everyone()
        manifest = read_manifest(self.dirs.final)
        return Artifact(self.dirs.final, manifest) if manifest else None


HISTORY_FILE = "history.jsonl"


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def process_state():
    """accelerate's process state; on a machine without GPUs, several processes use gloo.

    The first call fixes the state for the process, so it must come before any Trainer builds
    its own (which would otherwise see `accelerate launch --multi_gpu` without CUDA as one
    process).
    """
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_sharded(state) -> bool:
    """Whether ranks hold different parts of the parameters (ZeRO-3, FSDP)."""
    kind = str(getattr(state, "distributed_type", "NO")).rsplit(".", 1)[-1]
    if kind == "FSDP":
        return True
    # `accelerate launch` exports the ZeRO stage of a DeepSpeed profile.
    return kind == "DEEPSPEED" and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"


def world_dir(recipe: Recipe) -> Path:
    return recipe.output_dir() / "world"


# Trainer args that change what is shown or how often it is saved, not what is trained: changing
# them must not make a finished stage stale.
PRESENTATION_ARGS = ("disable_tqdm", "logging_steps", "logging_first_step", "report_to",
                     "log_level", "run_name", "save_steps", "save_total_limit", "log_samples")


def stage_config(recipe: Recipe, name: str) -> dict:
    """The resolved stage block plus the recipe defaults it depends on (hashed and recorded)."""
    stage = recipe.stages[name].model_dump(mode="json", by_alias=True)
    stage["args"] = {k: v for k, v in stage["args"].items() if k not in PRESENTATION_ARGS}
    stage.pop("push_to_hub", None)
    uses_world = recipe.model.name_or_path == "tiny" or any(
        src.get("world") for part in ("train", "eval")
        for src in ((stage.get("data") or {}).get(part) or []))
    return {
        "stage": stage,
        "seed": recipe.seed,
        "model": recipe.model.model_dump(mode="json"),
        "world": recipe.world if uses_world else None,
    }

"""What a stage sees: its recipe block, its inputs, its data, its directories.

A stage module only describes its training; everything shared (resolving inputs, reading and
converting data, choosing the starting model, Trainer defaults, writing the manifest on the
main process only) lives here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from accelerate.utils import gather_object
from datasets import Dataset
from transformers import EarlyStoppingCallback

from align.artifacts import (Artifact, Manifest, ModelRef, StageDirs, library_versions,
                             read_manifest)
from align.distributed import is_sharded, process_state
from align.errors import AlignError, DataError
from align.jsonl import write_jsonl
from align.kinds import model_kinds
from align.modeling import (count_trainable, load_start_model, load_tokenizer, plain_base,
                            set_adapter_base, torch_dtype)
from align.recipe import DataSource, Recipe, Stage, trainer_args
from align.stage_data import StageData
from align.stage_hash import stage_config
from align.stages.callbacks import NonFiniteLossCallback
from align.trackers import LOGS_DIR, uses_tensorboard

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
            if artifact.manifest.kind in model_kinds() and artifact.manifest.model:
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
    @cached_property
    def data(self) -> StageData:
        return StageData(self.recipe, self.name, self.inputs, tokenizer=self.load_tokenizer,
                         log=self.log)

    @property
    def dropped_rows(self) -> dict[str, int]:
        return self.data.dropped

    def rows(self, target: str, sources: list[DataSource] | None = None) -> list[dict]:
        """Rows of the stage's training sources (or `sources`), converted to `target`."""
        return self.data.rows(target, sources)

    def datasets(self, target: str):
        """(train, eval or None) as `datasets.Dataset`, eval from sources or a seeded split."""
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
        return self._tokenizer(artifact.tokenizer_path())

    def _tokenizer(self, ref):
        return load_tokenizer(ref, self.recipe.model.trust_remote_code)

    def load_start_model(self, task: str = "causal-lm", quantized: bool = False,
                         start: Artifact | None = None, merged_as: str = "base"):
        """The upstream model (or `start`, e.g. the RM for a value model) exactly, adapters
        merged; the recipe's base model when there is none. 4-bit when `quantized`: an adapter
        upstream is merged once into `<partial>/<merged_as>` first."""
        spec = self.recipe.model
        kwargs = dict(task=task, dtype=torch_dtype(spec.dtype),
                      trust_remote_code=spec.trust_remote_code)
        if spec.attn_implementation:
            kwargs["attn_implementation"] = spec.attn_implementation
        start = start or self.model_input()
        if start is None:
            start, kwargs["revision"] = self.base_model, spec.revision
        return load_start_model(start, method=self.stage.method if quantized else None,
                                merged_dir=self.dirs.partial / merged_as, is_main=self.is_main,
                                wait=self.state.wait_for_everyone, **kwargs)

    def adapter_base(self) -> str:
        """The `base` an adapter produced by this stage is applied to."""
        if self.stage.method.type == "qlora" and (self.dirs.partial / "base").exists():
            return "base"
        return self.start_reference()[1]

    # -- training arguments ------------------------------------------------------------------
    def training_args(self, config_cls, has_eval: bool = False, **stage_defaults):
        if self.stage.early_stopping_patience and not has_eval:
            raise AlignError(f"stages.{self.name}.early_stopping_patience needs eval data "
                             "(data.eval or data.eval_fraction).")
        args = trainer_args(self.recipe, self.stage, has_eval, stage_defaults)
        if not torch.cuda.is_available() and "use_cpu" not in self.stage.args:
            args["use_cpu"] = True
            if self.state.num_processes > 1:
                args["ddp_backend"] = "gloo"  # NCCL needs GPUs
        if "disable_tqdm" not in self.stage.args and not sys.stdout.isatty():
            # A CI log or a file: one printed line per logging step, no carriage-return bars.
            args["disable_tqdm"] = True
        if uses_tensorboard(args.get("report_to")):
            # Read by transformers' TensorBoardCallback when the Trainer is built: the event
            # files land in the artifact (`<stage>/logs/`), not in the checkpoints removed at
            # the end.
            os.environ["TENSORBOARD_LOGGING_DIR"] = str(self.dirs.partial / LOGS_DIR)
        return config_cls(output_dir=str(self.dirs.checkpoints), **args)

    def callbacks(self) -> list:
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
        self.state.wait_for_everyone()
        if self.is_main:
            metrics = dict(metrics or {})
            files = dict(files or {})
            last = self.dirs.last_checkpoint()
            if self.stage.keep_checkpoints and last is not None:
                # Out of checkpoints/ (removed when the stage commits), into the artifact.
                os.replace(last, self.dirs.partial / LAST_CHECKPOINT)
                files["last_checkpoint"] = LAST_CHECKPOINT
            if (self.dirs.partial / LOGS_DIR).is_dir():
                files.setdefault("logs", LOGS_DIR)  # TensorBoard event files
            if history:
                write_jsonl(self.dirs.partial / HISTORY_FILE, history)
                files["history"] = HISTORY_FILE
            if self.dropped_rows:
                metrics["dropped_rows"] = self.dropped_rows
            if model is not None and model.type == "adapter" and model.base:
                # PEFT's documented loading must find the weights the adapter trained on.
                set_adapter_base(self.dirs.partial / model.path,
                                 plain_base(self.dirs.final, model.base, self.dirs.partial))
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


    def describe_training(self, model, train, evaluation=None, unit: str = "rows") -> dict:
        """Log what trains on what; the counts every model stage records."""
        trainable, total = count_trainable(model)
        self.log(f"{self.stage.method.type}: {trainable:,} of {total:,} parameters train; "
                 f"{len(train)} train {unit}" + (f", {len(evaluation)} eval {unit}" if evaluation else ""))
        return {"trainable_parameters": trainable, "total_parameters": total,
                "train_rows": len(train)}

    def finish_model(self, trainer, tokenizer, metrics: dict, *, task: str = "causal-lm",
                     files: dict[str, str] | None = None) -> Artifact | None:
        """The end of every Trainer stage: save the model (a collective under ZeRO-3 / FSDP),
        check the replicas agree, record the model's lineage and write the manifest."""
        self.save_trainer_model(trainer, tokenizer)
        metrics = {**metrics, **self.replica_check(trainer.model, **self.trainer_decisions(trainer))}
        return self.finish(model=self.model_ref(task), tokenizer="model", files=files,
                           metrics=metrics, history=trainer.state.log_history)

    def model_ref(self, task: str = "causal-lm") -> ModelRef:
        """What this stage's `model/` holds: full weights, or an adapter on its start model."""
        method = self.stage.method.type
        adapter = method not in ("full", "freeze")
        return ModelRef(type="adapter" if adapter else "full", path="model",
                        base=self.adapter_base() if adapter else None, root=self.root_model(),
                        method=method, task=task)


HISTORY_FILE = "history.jsonl"
LAST_CHECKPOINT = "last_checkpoint"

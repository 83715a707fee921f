"""One module per stage kind, each with `run(ctx: StageContext) -> Artifact`."""

from __future__ import annotations

import importlib

MODULES = {
    "pretrain": "align.stages.sft",
    "sft": "align.stages.sft",
    "rm": "align.stages.rm",
    "dpo": "align.stages.preference",
    "kto": "align.stages.preference",
    "orpo": "align.stages.preference",
    "ppo": "align.stages.ppo",
    "idk": "align.stages.idk",
    "evaluate": "align.stages.evaluate",
}


def stage_module(kind: str):
    from align.errors import AlignError

    try:
        return importlib.import_module(MODULES[kind])
    except ModuleNotFoundError as exc:
        if exc.name == MODULES[kind]:
            raise AlignError(f"stage kind '{kind}' is not implemented in this version of align.") from None
        raise

"""Stage `idk`: probe the upstream model on QA rows and write honesty training data.

Its artifact is data (sft, preference, kto, rm, prompts, probe files plus stats); later stages
read a file with `data: {stage: <this stage>, file: preference}`.
"""

from __future__ import annotations

from align.honesty.builder import (ProbeConfig, build_outputs, config_dict, probe, probe_stats,
                                   write_outputs)
from align.honesty.judge import Judge
from align.kinds import get_kind
from align.modeling import load_artifact_model
from align.stages.context import StageContext


def run(ctx: StageContext):
    config = ProbeConfig.from_options({"seed": ctx.recipe.seed, **ctx.stage.options},
                                      f"stages.{ctx.name}.options")
    judge = Judge.from_config({**config.judge, "idk_responses": config.idk_responses})
    rows = ctx.rows(get_kind(ctx.stage.kind).data)
    upstream = ctx.model_input()
    model = load_artifact_model(upstream, trust_remote_code=ctx.recipe.model.trust_remote_code)
    tokenizer = ctx.load_tokenizer_of(upstream)

    records = probe(model, tokenizer, rows, config, judge, progress=ctx.is_main)
    outputs = build_outputs(records, config)
    stats = probe_stats(records, config)
    stats["rows"] = {name: len(rows) for name, rows in outputs.items()}
    files = {}
    if ctx.is_main:
        files = write_outputs(ctx.dirs.partial, records, outputs, stats)
        ctx.log(f"{stats['categories']} of {stats['questions']} questions; "
                f"files: " + ", ".join(f"{k} {v}" for k, v in stats["rows"].items()))
    return ctx.finish(files=files, metrics={**stats, "probe": config_dict(config)})

"""One module per stage kind, each with `run(ctx: StageContext) -> Artifact`; `align.kinds`
names which module runs which kind."""

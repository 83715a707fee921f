"""Two CPU processes through `accelerate launch` (profile cpu-ddp): real data parallelism."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import write_recipe


def test_stages_run_data_parallel_on_two_processes(tmp_path, pretrained_tiny):
    common = {"max_steps": 6, "per_device_train_batch_size": 4, "learning_rate": 1e-3,
              "save_steps": 3, "logging_steps": 2, "disable_tqdm": True}
    stages = {"sft": {"kind": "sft", "data": "world:sft", "args": common},
              "lora": {"kind": "sft", "from": "sft", "data": "world:sft", "method": "lora",
                       "args": common}}
    path = write_recipe(tmp_path, stages, model={"name_or_path": pretrained_tiny},
                        accelerate="cpu-ddp")
    proc = subprocess.run([sys.executable, "-m", "align", "run", path], capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "run"
    for name in stages:
        manifest = json.loads((run / name / "artifact.json").read_text())
        assert manifest["metrics"]["world_size"] == 2
        assert manifest["metrics"]["replicas_identical"] is True
        # Exactly one manifest, written once, and no leftovers of the two processes.
        assert len(list(run.glob(f"{name}*/artifact.json"))) == 1
        assert not list(run.glob(f"{name}/.artifact.json.*.tmp"))

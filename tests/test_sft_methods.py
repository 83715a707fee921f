"""Every tuning method on the tiny model: the loss falls, the artifact reloads and generates."""

from __future__ import annotations

import json

import pytest
import torch

from align.artifacts import load_artifact
from align.generation import generate_answers
from align.modeling import load_artifact_model, load_full, load_tokenizer
from align.runner import run_recipe
from conftest import write_recipe

pytestmark = pytest.mark.slow  # every test fine-tunes the session's pretrained model

LEARNING_RATES = {"full": 1e-3, "freeze": 3e-3, "lora": 1e-2, "qlora": 1e-2, "ptuning": 3e-2,
                  "prefix": 3e-2}


def sft_stage(method: str, steps: int = 40) -> dict:
    return {"kind": "sft", "data": "world:sft",
            "method": {"type": method, "lora": {"r": 8, "alpha": 16},
                       "num_virtual_tokens": 4, "encoder_hidden_size": 32},
            "args": {"max_steps": steps, "learning_rate": LEARNING_RATES[method],
                     "per_device_train_batch_size": 16, "logging_steps": 5, "save_steps": 1000,
                     "disable_tqdm": True}}


def batch_loss(model, tokenizer, rows) -> float:
    """Mean loss on the assistant tokens, as SFT trains it."""
    losses = []
    for row in rows:
        enc = tokenizer.apply_chat_template(row["messages"], return_dict=True,
                                            return_assistant_tokens_mask=True)
        ids = torch.tensor([enc["input_ids"]])
        labels = ids.masked_fill(torch.tensor([enc["assistant_masks"]]) == 0, -100)
        with torch.no_grad():
            losses.append(model(input_ids=ids, labels=labels).loss.item())
    return sum(losses) / len(losses)


@pytest.mark.parametrize("method", ["full", "freeze", "lora", "qlora", "ptuning", "prefix"])
def test_method_trains_and_reloads(tmp_path, method, pretrained_tiny):
    path = write_recipe(tmp_path, {"sft": sft_stage(method)},
                        model={"name_or_path": pretrained_tiny})
    artifact = run_recipe(path)["sft"]
    metrics = artifact.manifest.metrics
    # Prompt learning trains only a few virtual tokens: it moves the loss least in 40 steps.
    ratio = 0.9 if method in ("ptuning", "prefix") else 0.8
    assert metrics["train_loss_last"] < ratio * metrics["train_loss_first"], metrics

    manifest = load_artifact(artifact.path).manifest
    adapter = method not in ("full", "freeze")
    assert manifest.model.type == ("adapter" if adapter else "full")
    assert manifest.model.method == method
    if method == "freeze":
        assert metrics["trainable_parameters"] < metrics["total_parameters"] / 2

    # The reloaded artifact is the trained model: lower loss than the base on training rows.
    rows = [json.loads(line) for line in open(tmp_path / "run" / "world" / "sft.jsonl")][:16]
    tokenizer = load_tokenizer(artifact.model_path())
    trained = load_artifact_model(artifact)
    base = load_full(pretrained_tiny)
    assert batch_loss(trained, tokenizer, rows) < 0.9 * batch_loss(base, tokenizer, rows)

    answers = generate_answers(trained, tokenizer, [rows[0]["messages"][0]["content"]],
                               max_new_tokens=12)
    assert answers[0][0].strip(), "the reloaded model generated nothing"


def test_qlora_adapter_loads_onto_its_base_with_peft(tmp_path, pretrained_tiny):
    from peft import PeftModel

    path = write_recipe(tmp_path, {"sft": sft_stage("qlora", steps=10)},
                        model={"name_or_path": pretrained_tiny})
    artifact = run_recipe(path)["sft"]
    config = json.loads((artifact.model_path() / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    base = load_full(load_artifact(artifact.path).manifest.model.base)
    model = PeftModel.from_pretrained(base, str(artifact.model_path()))
    lora_weights = [n for n, _ in model.named_parameters() if "lora_B" in n]
    assert lora_weights
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)

"""Exact hand-off from a LoRA or QLoRA SFT stage to DPO and KTO.

The reference log-probs a preference stage uses (computed by TRL's own `compute_ref_log_probs`,
on a batch from the stage's own collator, inside the trainer that `build_trainer` sets up) must
equal the SFT artifact's log-probs computed independently: its base plus its PEFT adapter,
unmerged, in float32. They must also differ from the raw base, so the test could fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from align.artifacts import MANIFEST, load_artifact
from align.modeling import artifact_base, load_full, quantization_config
from align.runner import run_recipe
from align.stages.preference import build_trainer, sequence_logps
from preference_pipeline import QUIET, derived_recipe, stage_context

pytestmark = pytest.mark.slow  # trains SFT adapters on the shared preference run's pretrained model

TOLERANCE = 1e-4  # nats per sequence; what we measure is ~1e-6 (float32 rounding of the merge)
ARGS = {**QUIET, "max_steps": 1, "per_device_train_batch_size": 8, "bf16": False}
SFT_ARGS = {**QUIET, "max_steps": 20, "per_device_train_batch_size": 16, "learning_rate": 1e-2,
            "bf16": False}


def sft(method: str) -> dict:
    return {"kind": "sft", "from": "pretrain", "data": "world:sft", "args": SFT_ARGS,
            "method": {"type": method, "lora": {"r": 8, "alpha": 16}}}


def preference(kind: str, upstream: str, method: str) -> dict:
    return {"kind": kind, "from": upstream, "data": "world:preference_train", "args": ARGS,
            "method": {"type": method, "lora": {"r": 8, "alpha": 16}}}


STAGES = {
    "sft_lora": sft("lora"),
    "sft_qlora": sft("qlora"),
    "dpo_lora_from_lora": preference("dpo", "sft_lora", "lora"),
    "dpo_full_from_lora": preference("dpo", "sft_lora", "full"),
    "kto_lora_from_lora": preference("kto", "sft_lora", "lora"),
    "dpo_lora_from_qlora": preference("dpo", "sft_qlora", "lora"),
    "dpo_qlora_from_qlora": preference("dpo", "sft_qlora", "qlora"),
}


@pytest.fixture(scope="module")
def recipe(preference_run):
    path = derived_recipe(preference_run, STAGES, "handoff")
    run_recipe(path, only=["pretrain", "sft_lora", "sft_qlora"])
    return path


def reference_and_batch(recipe_path: str, name: str, rows: int = 8):
    """The stage's trainer, one batch from its collator, and TRL's reference log-probs on it."""
    trainer = build_trainer(stage_context(recipe_path, name)).trainer
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(rows)])
    reference = trainer.ref_model if trainer.ref_model is not None else trainer.model
    return trainer, batch, reference_logps(trainer, reference, batch)


def reference_logps(trainer, model, batch) -> torch.Tensor:
    """Per-sequence, in batch order. DPO returns the (chosen, rejected) halves of the batch;
    KTO the completions and the mismatched KL completions, of which the first are the batch."""
    from trl import KTOTrainer

    out = trainer.compute_ref_log_probs(model, batch)
    return out[0] if isinstance(trainer, KTOTrainer) else torch.cat(out)


def independent_logps(model, batch) -> torch.Tensor:
    """Per-sequence completion log-probs, outside TRL: a plain forward pass and a gather."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sequence_logps(logits.float(), batch["input_ids"], batch["completion_mask"])


def sft_unmerged(artifact_path, base_kwargs=None):
    """The SFT model as its artifact defines it, loaded the plain PEFT way: base + adapter."""
    from peft import PeftModel

    artifact = load_artifact(artifact_path)
    base = Path(artifact_base(artifact))
    if (base / MANIFEST).exists():  # the base is an upstream artifact holding full weights
        base = load_artifact(base).model_path()
    base = load_full(base, dtype=torch.float32, **(base_kwargs or {}))
    return PeftModel.from_pretrained(base, str(artifact.model_path())).eval(), artifact


@pytest.mark.parametrize("name, upstream", [
    ("dpo_lora_from_lora", "sft_lora"),
    ("dpo_full_from_lora", "sft_lora"),
    ("kto_lora_from_lora", "sft_lora"),
    ("dpo_lora_from_qlora", "sft_qlora"),
])
def test_reference_is_the_sft_model(recipe, name, upstream):
    trainer, batch, ref = reference_and_batch(recipe, name)
    run_dir = load_artifact_path(recipe, upstream)
    sft_model, artifact = sft_unmerged(run_dir)
    expected = independent_logps(sft_model, batch)
    diff = (ref - expected).abs().max().item()
    print(f"{name}: max |reference - SFT| = {diff:.2e} nats over {len(ref)} sequences")
    assert diff < TOLERANCE

    # The comparison has teeth: the raw base (the adapter disabled) scores these differently.
    with sft_model.disable_adapter():
        base = independent_logps(sft_model, batch)
    assert (base - expected).abs().max().item() > 100 * TOLERANCE

    if "lora" in name.split("_")[1]:
        # The reference does not see the stage's own adapter: train it (here: randomise it) and
        # the reference stays put while the policy moves.
        with torch.no_grad():
            for param_name, param in trainer.model.named_parameters():
                if "lora_B" in param_name:
                    param.normal_(0.0, 0.5)
        assert torch.equal(reference_logps(trainer, trainer.model, batch), ref)
        policy = independent_logps(trainer.model, batch)
        assert (policy - ref).abs().max().item() > 100 * TOLERANCE
    else:
        # Full fine-tuning: a separate reference copy, not the policy object. Without it TRL
        # would reload `config._name_or_path`: the base the SFT adapter sits on, not the SFT model.
        assert trainer.ref_model is not None and trainer.ref_model is not trainer.model
        assert Path(trainer.model.config._name_or_path).parent.name == "pretrain"


def test_qlora_upstream_is_merged_in_float32_not_4bit(recipe):
    """The QLoRA SFT adapter was trained on a 4-bit base; the hand-off merges it into the float32
    base instead. Document how far the 4-bit view of the same SFT model is from what later
    stages start from, and that a qlora DPO stage's reference is that 4-bit view."""
    run_dir = load_artifact_path(recipe, "sft_qlora")
    float32_sft, artifact = sft_unmerged(run_dir)
    _, batch, ref = reference_and_batch(recipe, "dpo_lora_from_qlora")
    exact = independent_logps(float32_sft, batch)

    from align.recipe import MethodSpec

    quantized = quantization_config(MethodSpec(type="qlora"))
    four_bit_sft, _ = sft_unmerged(run_dir, {"quantization": quantized})
    as_trained = independent_logps(four_bit_sft, batch)
    gap = (as_trained - exact).abs().max().item()

    _, _, qlora_ref = reference_and_batch(recipe, "dpo_qlora_from_qlora")
    qlora_gap = (qlora_ref - exact).abs().max().item()
    print(f"QLoRA SFT: float32 merge vs base+adapter {(ref - exact).abs().max().item():.2e}; "
          f"4-bit base + adapter {gap:.3f}; qlora DPO reference (4-bit merged SFT) {qlora_gap:.3f}"
          " nats")
    assert (ref - exact).abs().max().item() < TOLERANCE
    # Quantisation error is real but bounded: far above float32 rounding, far below the
    # difference SFT made.
    assert TOLERANCE < gap < 5.0 and TOLERANCE < qlora_gap < 5.0


def load_artifact_path(recipe_path: str, name: str):
    from align.recipe import load_recipe

    return load_recipe(recipe_path).output_dir() / name

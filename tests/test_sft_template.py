"""SFT on a chat template without `{% generation %}` markers (one that only says
`add_generation_prompt`): trained on each conversation's last answer as prompt/completion rows
instead of crashing in TRL. `assistant_only_loss: true` on it is refused before training (a case
of tests/test_bad_input.py, on `plain_template_model`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import small_tiny_model, write_recipe

from align.stages.sft import marks_generation
from align.tiny import CHAT_TEMPLATE

PLAIN = CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")


def test_only_the_generation_block_counts():
    assert marks_generation(CHAT_TEMPLATE)
    assert marks_generation("{%- generation -%}x{%- endgeneration -%}")
    assert not marks_generation(PLAIN)  # still mentions add_generation_prompt
    assert "generation" in PLAIN
    assert not marks_generation(None)


def plain_template_model(out: Path) -> Path:
    """A copy of the tiny model whose chat template has no `{% generation %}` markers."""
    shutil.copytree(small_tiny_model(), out)
    for path in out.glob("chat_template.jinja"):
        path.write_text(PLAIN)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    tokenizer.chat_template = PLAIN
    tokenizer.save_pretrained(str(out))
    assert not marks_generation(AutoTokenizer.from_pretrained(str(out)).chat_template)
    return out


@pytest.fixture
def plain_model(tmp_path):
    return plain_template_model(tmp_path / "plain-template")


def stages(**args) -> dict:
    return {"sft": {"kind": "sft", "data": {"train": {"world": "sft", "max_samples": 16}},
                    "args": {"max_steps": 2, "logging_steps": 1, "per_device_train_batch_size": 4,
                             "save_steps": 100, "disable_tqdm": True, **args}}}


@pytest.mark.slow
def test_sft_without_generation_markers_trains_on_the_answer(tmp_path, plain_model, capsys):
    from align.runner import run_recipe

    path = write_recipe(tmp_path, stages(), model={"name_or_path": str(plain_model)})
    artifact = run_recipe(path)["sft"]
    assert artifact.manifest.metrics["steps"] == 2
    assert "prompt/completion rows" in capsys.readouterr().out


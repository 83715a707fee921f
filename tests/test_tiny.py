"""The embedded tiny model: small, cached by settings, and ready for assistant-only loss."""

from __future__ import annotations

from align.data.world import WorldConfig
from align.tiny import TinyConfig, build_tiny, count_parameters


def test_tiny_model_is_small_cached_and_marks_assistant_turns(tmp_path):
    from transformers import AutoTokenizer

    config = TinyConfig(world=WorldConfig(n_entities=24))
    path = build_tiny(config)
    assert count_parameters(path) < 3_000_000
    stamp = (path / "tiny.json").stat().st_mtime_ns
    assert build_tiny(TinyConfig(world=WorldConfig(n_entities=24))) == path
    assert (path / "tiny.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert build_tiny(TinyConfig(world=WorldConfig(n_entities=25))) != path

    tokenizer = AutoTokenizer.from_pretrained(path)
    messages = [{"role": "user", "content": "Who leads Bakia?"},
                {"role": "assistant", "content": "The leader of Bakia is Groul Douknal."}]
    out = tokenizer.apply_chat_template(messages, return_dict=True,
                                        return_assistant_tokens_mask=True)
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    answer = tokenizer.decode(masked)
    assert answer == "The leader of Bakia is Groul Douknal.<|end|>"
    assert tokenizer.eos_token == "<|end|>" and tokenizer.pad_token_id != tokenizer.eos_token_id

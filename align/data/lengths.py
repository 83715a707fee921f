"""Prompts longer than a stage's max length, found before training.

A trainer truncates every example to `max_length` tokens. When the prompt alone fills that
budget, nothing of the answer survives: SFT with assistant-only loss divides by zero tokens,
DPO and KTO compare empty completions. Such rows are reported with their file and row (or
dropped, with `data.on_error: drop`) instead of quietly training on nothing.
"""

from __future__ import annotations

from align.errors import DataError

# Targets whose rows have a prompt followed by something to learn.
PROMPTED_TARGETS = ("sft", "preference", "unpaired")


def prompt_of(row: dict) -> list[dict]:
    """The messages a converted row conditions on (everything before the last answer)."""
    if "prompt" in row:
        return row["prompt"]
    return row["messages"][:-1]


def prompt_tokens(tokenizer, messages: list[dict], limit: int) -> int:
    """Token count of the prompt as the chat template renders it, with the assistant header.

    A token covers at least one byte (plus a possible BOS), so a prompt of fewer bytes than
    `limit` is not encoded: the byte count (an upper bound) is returned instead."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    upper = len(text.encode()) + 2
    if upper < limit:
        return upper
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def stage_max_length(args: dict, config_cls, tokenizer) -> int | None:
    """The `max_length` a stage's trainer truncates to: its args, else the config default, capped
    by the tokenizer's model_max_length when that is a real limit."""
    import dataclasses

    limit = args.get("max_length")
    if limit is None and config_cls is not None:
        fields = {f.name: f.default for f in dataclasses.fields(config_cls)}
        limit = fields.get("max_length")
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and model_max < 1_000_000:
        limit = model_max if limit is None else min(limit, model_max)
    return limit if isinstance(limit, int) else None


def check_prompt_lengths(rows: list[dict], row_numbers: list[int] | None, tokenizer, limit: int,
                         source: str, on_error: str, setting: str) -> tuple[list[dict], int]:
    """Rows whose prompt leaves room for an answer; (kept rows, number dropped).

    `row_numbers[i]` is the source row of converted row i (None when conversion was not one to
    one; the message then counts converted rows). `setting` names the key to raise.
    """
    kept, dropped = [], 0
    for i, row in enumerate(rows):
        n = prompt_tokens(tokenizer, prompt_of(row), limit)
        if n < limit:
            kept.append(row)
            continue
        if on_error == "drop":
            dropped += 1
            continue
        where = "" if row_numbers else f" (converted row {i + 1})"
        raise DataError(f"the prompt is {n} tokens{where}, but the stage truncates examples to "
                        f"max_length {limit}, so nothing of the answer would be trained on. "
                        f"Shorten the prompt, raise {setting} (up to the model's context), or set "
                        "data.on_error: drop to skip such rows", path=source,
                        row=row_numbers[i] if row_numbers else None, column="prompt")
    if not kept:
        raise DataError(f"every prompt is at least max_length {limit} tokens long; raise {setting}",
                        path=source)
    return kept, dropped


def source_row_numbers(n_source_rows: int, dropped_rows: set[int], n_converted: int) -> list[int] | None:
    """Source row numbers of converted rows, when conversion kept rows one to one."""
    numbers = [i for i in range(1, n_source_rows + 1) if i not in dropped_rows]
    return numbers if len(numbers) == n_converted else None


def fit_prompts(rows: list[dict], n_source: int, problems, tokenizer, args: dict, config_cls,
                source: str, on_error: str, setting: str) -> tuple[list[dict], int, int | None]:
    """What a stage and `align validate` both do: (kept rows, number dropped, the limit), with
    rows kept as they are when there is no limit or no chat template to measure prompts with.
    `problems` are the conversion's dropped rows (so rows are numbered as in the source)."""
    limit = stage_max_length(args, config_cls, tokenizer)
    if limit is None or not getattr(tokenizer, "chat_template", None):
        return rows, 0, None
    numbers = source_row_numbers(n_source, {p.row for p in problems}, len(rows))
    kept, dropped = check_prompt_lengths(rows, numbers, tokenizer, limit, source, on_error, setting)
    return kept, dropped, limit

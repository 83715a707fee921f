"""Convert dataset rows of many layouts into the TRL formats each stage trains on.

Recipes point stages at datasets in whatever layout they were published in (Anthropic HH,
UltraFeedback, Alpaca, ShareGPT, TRL's own formats...). Converting them here, once, keeps the
stages simple and lets every malformed row be reported with its file, row (1-based) and column
instead of surfacing later as a tokenizer or chat-template crash deep inside training.

The module works on plain row dicts (any iterable of mappings) so it can be tested without
`datasets`; a loaded `datasets.Dataset` iterates as such rows too.

Decisions worth knowing:

* Every output is conversational: strings become ``{"role": "user"}`` prompts and
  ``{"role": "assistant"}`` responses, so the tokenizer's chat template formats all stages alike.
  Only the ``language_modeling`` target keeps plain ``text``, and it accepts only text rows:
  flattening conversations without the chat template would silently train on a made-up format.
* Output rows carry only the target's fields; messages keep only ``role`` and ``content``.
* A conversation must alternate user/assistant after one optional leading system message, and
  a response must be a single, non-empty assistant message.
* Labels accept ``True``/``False``, ``1``/``0`` and the strings ``"true"``/``"false"``/``"1"``/
  ``"0"`` (any case). ``"yes"``/``"no"`` and anything else are refused, so a column that only
  looks boolean (e.g. a 1-5 rating or free text) is never guessed at.
* Paired rows become unpaired (KTO) rows by emitting the chosen response as desirable and the
  rejected one as undesirable, in that order, pair by pair. The reverse is refused.
* Paired rows train the ``sft`` target on prompt + chosen; unpaired rows are refused for ``sft``
  because half of them are undesirable completions.
* For ``prompt_only`` (PPO) a conversation may end on a user turn; otherwise its final assistant
  turn is cut off. Other rows yield their prompt, after the whole row is validated.
* If every row is malformed the conversion fails even with ``on_error="drop"``: training on an
  empty dataset is never what the recipe meant.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import chain

from align.errors import AlignError, DataError

FORMATS = ("auto", "trl", "hh", "ultrafeedback", "alpaca", "sharegpt", "kto_tag", "qa",
           "triviaqa", "nq_open", "popqa", "simpleqa")
TARGETS = ("language_modeling", "sft", "preference", "unpaired", "prompt_only", "qa",
           "labelled_qa")

# Shown when a layout cannot be detected, so the user can pick one by its columns.
_LAYOUT_HELP = {
    "trl": "text | messages | prompt + completion [+ label] | [prompt +] chosen + rejected"
    " | prompt (TRL's standard and conversational formats)",
    "hh": "chosen, rejected: '\\n\\nHuman: ...\\n\\nAssistant: ...' transcripts (Anthropic HH)",
    "ultrafeedback": "prompt (string), chosen, rejected (message lists) (UltraFeedback-binarized)",
    "alpaca": "instruction, optional input, output, system, history ([[instruction, response], ...])",
    "sharegpt": "conversations: list of {from: human|gpt|system|function_call|observation, value}"
    ", optional system, tools",
    "kto_tag": "prompt, completion and a boolean column named by label_column",
    "qa": "question, answers (a string or a list of accepted answers) [, known]",
    "triviaqa": "question, answer: {value, aliases, ...} (TriviaQA)",
    "nq_open": "question, answer (a list of accepted answers) (NQ-open)",
    "popqa": "question, possible_answers (a JSON list in a string) (PopQA)",
    "simpleqa": "problem, answer (SimpleQA)",
}
QA_FORMATS = ("qa", "triviaqa", "nq_open", "popqa", "simpleqa")

# Row kinds: what a layout provides, independent of how it is spelled.
_KIND_WORDS = {
    "text": "plain text rows",
    "conversation": "conversation rows (messages)",
    "prompt_completion": "prompt/completion rows",
    "preference": "paired preference rows (chosen/rejected)",
    "unpaired": "unpaired rows (one completion with a desirable/undesirable label)",
    "prompt": "prompt-only rows",
    "qa": "question-answer rows",
}

_ACCEPTS = {
    "language_modeling": {"text"},
    "sft": {"conversation", "prompt_completion", "preference"},
    "preference": {"preference"},
    "unpaired": {"unpaired", "preference"},
    "prompt_only": {"conversation", "prompt_completion", "preference", "unpaired", "prompt"},
    "qa": {"qa"},
    "labelled_qa": {"qa"},
}

# What a bare "trl" layout means for each target when no columns are known yet.
_TRL_DEFAULT = {
    "language_modeling": ("text", {"text"}),
    "sft": ("conversation", {"messages"}),
    "preference": ("preference", {"chosen", "rejected"}),
    "unpaired": ("unpaired", {"prompt", "completion"}),
    "prompt_only": ("prompt", {"prompt"}),
    "qa": ("qa", {"question", "answers"}),
    "labelled_qa": ("qa", {"question", "answers"}),
}

_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
_SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    # LLaMA-Factory's tool turns: the model's call, then the tool's answer
    "function_call": "assistant",
    "observation": "tool",
}
_ULTRAFEEDBACK_MARKERS = {"prompt_id", "score_chosen", "score_rejected"}
_ORDER_RULE = "after an optional leading system message, turns must alternate user, assistant"

_HH_TURN = re.compile(r"(?:\A\s*|\n\n)(Human|Assistant):")
_HH_START = re.compile(r"\A\s*Human:")


@dataclass(frozen=True)
class RowProblem:
    """A malformed row skipped in drop mode, kept so the count and reasons can be reported."""

    row: int
    column: str | None
    reason: str

    def __str__(self) -> str:
        where = f"row {self.row}" + (f", column '{self.column}'" if self.column else "")
        return f"{where}: {self.reason}"


@dataclass
class ConversionResult:
    rows: list[dict]
    dropped: list[RowProblem] = field(default_factory=list)
    fmt: str = ""
    ignored: list[str] = field(default_factory=list)  # source columns the conversion left out
    # Preference pairs left out because chosen and rejected are identical (nothing to learn).
    identical: int = 0


class LayoutError(DataError):
    """The dataset's columns do not fit the layout (`format`) it is read with."""


# Columns a layout reads beyond the ones it needs.
_OPTIONAL = {
    "sharegpt": {"system", "tools"},
    "alpaca": {"input", "system", "history"},
    "qa": {"known", "category"},
    "triviaqa": {"known"}, "nq_open": {"known"}, "popqa": {"known"}, "simpleqa": {"known"},
}


class _RowError(Exception):
    """Raised by readers; convert_rows adds the file and row number the reader cannot know."""

    def __init__(self, column: str | None, reason: str):
        super().__init__(reason)
        self.column, self.reason = column, reason


@dataclass(frozen=True)
class _Ctx:
    target: str
    label_column: str


# --------------------------------------------------------------------------------------------
# public API


def detect_format(
    columns: Iterable[str], *, label_column: str = "label", sample: Mapping | None = None
) -> str:
    """Name the layout of a dataset from its columns.

    `sample` (a first row) settles what column names alone cannot: HH transcripts versus TRL
    implicit-prompt rows, both spelled chosen/rejected. Without it the answer is "trl", whose
    reader still parses HH transcripts, so the conversion comes out the same.
    """
    cols = set(columns)
    if "conversations" in cols:
        return "sharegpt"
    if {"instruction", "output"} <= cols:
        return "alpaca"
    if {"chosen", "rejected"} <= cols:
        if "prompt" in cols:
            if cols & _ULTRAFEEDBACK_MARKERS:
                return "ultrafeedback"
            if (
                sample is not None
                and isinstance(sample.get("prompt"), str)
                and isinstance(sample.get("chosen"), list)
            ):
                return "ultrafeedback"
            return "trl"
        if sample is not None and _looks_hh(sample.get("chosen")):
            return "hh"
        return "trl"
    if label_column != "label" and {"prompt", "completion", label_column} <= cols:
        return "kto_tag"
    if {"question", "answers"} <= cols:
        return "qa"
    if {"question", "possible_answers"} <= cols:
        return "popqa"
    if {"problem", "answer"} <= cols:
        return "simpleqa"
    if {"question", "answer"} <= cols:
        if sample is not None and isinstance(sample.get("answer"), Mapping):
            return "triviaqa"
        return "nq_open"
    if _trl_layout(cols, label_column) is not None:
        return "trl"
    known = "\n".join(f"  - {name}: {help_}" for name, help_ in _LAYOUT_HELP.items())
    raise AlignError(
        "cannot tell the dataset's layout from its columns: "
        f"{', '.join(sorted(cols)) or '(none)'}.\nKnown layouts:\n{known}\n"
        "Rename the columns to one of these layouts, or set the dataset's `format` in the recipe."
    )


def required_columns(
    fmt: str, target: str, *, columns: Iterable[str] | None = None, label_column: str = "label"
) -> set[str]:
    """Columns a dataset must have for `fmt` to feed `target`, checked before any training.

    Raises AlignError when the layout cannot feed the target at all (e.g. unpaired rows for a
    preference stage), so `align validate` reports it up front. For "trl" and "auto" the answer
    depends on which TRL format the dataset uses: pass `columns` to decide; without them "trl"
    answers with the canonical format for the target.
    """
    _check_names(fmt, target)
    cols = None if columns is None else set(columns)
    if fmt == "auto":
        if cols is None:
            raise AlignError(
                "format 'auto' has no fixed columns: pass the dataset's columns, "
                "or set the dataset's `format` in the recipe"
            )
        fmt = detect_format(cols, label_column=label_column)
    if fmt == "trl" and cols is None:
        kind, needed = _TRL_DEFAULT[target]
        if target == "unpaired":
            needed = needed | {label_column}
    else:
        kind, needed, _ = _plan(fmt, cols or set(), label_column)
    refusal = _refusal(kind, target, fmt)
    if refusal:
        raise AlignError(refusal)
    return set(needed)


def convert_rows(
    rows: Iterable[Mapping],
    *,
    source: str,
    target: str,
    fmt: str = "auto",
    label_column: str = "label",
    on_error: str = "fail",
    keep_columns: bool = False,
) -> ConversionResult:
    """Convert rows to `target`, validating each; `source` names the file in every message.
    `keep_columns` keeps each source row's other columns beside the converted ones.

    The layout is decided once, from the first row, as a `datasets` table has the same columns
    in every row. Row numbers are 1-based positions in `rows`.
    """
    _check_names(fmt, target)
    if on_error not in ("fail", "drop"):
        raise AlignError(f"on_error must be 'fail' or 'drop', not {on_error!r}")

    it = iter(rows)
    first = next(it, None)
    if first is None:
        raise DataError("the dataset has no rows", path=source)
    if not isinstance(first, Mapping):
        raise DataError(
            f"a row must map column names to values, got {_type(first)}", path=source, row=1
        )
    columns = set(first)
    if fmt == "auto":
        try:
            fmt = detect_format(columns, label_column=label_column, sample=first)
        except AlignError as exc:
            raise AlignError(f"{source}: {exc}") from None
    try:
        kind, needed, reader = _plan(fmt, columns, label_column)
    except AlignError as exc:
        raise AlignError(f"{source}: {exc}") from None
    refusal = _refusal(kind, target, fmt)
    if refusal:
        raise AlignError(f"{source}: {refusal}")
    missing = needed - columns
    if missing:
        raise LayoutError(
            f"the {fmt} layout needs the column(s) {', '.join(sorted(missing))}; "
            f"the dataset has {', '.join(sorted(columns)) or '(none)'}",
            path=source,
        )

    ctx = _Ctx(target=target, label_column=label_column)
    out: list[dict] = []
    dropped: list[RowProblem] = []
    count = 0
    for number, row in enumerate(chain([first], it), start=1):
        count = number
        try:
            if not isinstance(row, Mapping):
                raise _RowError(None, f"a row must map column names to values, got {_type(row)}")
            records = _emit(kind, target, reader(row, ctx))
            if keep_columns:
                records = [{**row, **rec} for rec in records]
            out.extend(records)
        except _RowError as exc:
            if on_error == "fail":
                raise DataError(exc.reason, path=source, row=number, column=exc.column) from None
            dropped.append(RowProblem(number, exc.column, exc.reason))
    if not out:
        raise DataError(f"all {count} rows are malformed; the first: {dropped[0]}", path=source)
    ignored = [] if keep_columns else sorted(columns - needed - _OPTIONAL.get(fmt, set()))
    out, identical = drop_identical_pairs(out, source) if target == "preference" else (out, 0)
    return ConversionResult(rows=out, dropped=dropped, fmt=fmt, ignored=ignored,
                            identical=identical)


def drop_identical_pairs(rows: list[dict], source: str) -> tuple[list[dict], int]:
    """Leave out preference pairs whose chosen and rejected are the same: they teach nothing
    (DPO's and a reward model's loss have no gradient there). All of them identical is an error."""
    kept = [r for r in rows if r.get("chosen") != r.get("rejected")]
    if rows and not kept:
        raise DataError(f"all {len(rows)} preference pairs have identical chosen and rejected "
                        "responses; there is nothing to learn from", path=source)
    return kept, len(rows) - len(kept)


# --------------------------------------------------------------------------------------------
# planning: layout -> (row kind, required columns, reader)


def _check_names(fmt: str, target: str) -> None:
    if fmt not in FORMATS:
        raise AlignError(f"unknown dataset format {fmt!r}; known formats: {', '.join(FORMATS)}")
    if target not in TARGETS:
        raise AlignError(f"unknown target {target!r}; known targets: {', '.join(TARGETS)}")


def _plan(fmt: str, columns: set[str], label_column: str):
    if fmt == "hh":
        return "preference", {"chosen", "rejected"}, _read_hh
    if fmt == "ultrafeedback":
        return "preference", {"prompt", "chosen", "rejected"}, _read_explicit_pair
    if fmt == "alpaca":
        return "prompt_completion", {"instruction", "output"}, _read_alpaca
    if fmt == "sharegpt":
        return "conversation", {"conversations"}, _read_sharegpt
    if fmt == "kto_tag":
        return "unpaired", {"prompt", "completion", label_column}, _read_unpaired
    if fmt == "qa":
        return "qa", {"question", "answers"}, _read_qa
    if fmt in QA_FORMATS:
        needed = {"triviaqa": {"question", "answer"}, "nq_open": {"question", "answer"},
                  "popqa": {"question", "possible_answers"}, "simpleqa": {"problem", "answer"}}
        return "qa", needed[fmt], _public_qa_reader(fmt)
    layout = _trl_layout(columns, label_column)
    if layout is None:
        raise AlignError(
            f"the columns {', '.join(sorted(columns)) or '(none)'} match none of TRL's formats "
            f"({_LAYOUT_HELP['trl']})"
        )
    return layout


def _trl_layout(cols: set[str], label_column: str):
    if {"chosen", "rejected"} <= cols:
        if "prompt" in cols:
            return "preference", {"prompt", "chosen", "rejected"}, _read_explicit_pair
        return "preference", {"chosen", "rejected"}, _read_implicit_pair
    if {"prompt", "completion"} <= cols:
        if label_column in cols:
            return "unpaired", {"prompt", "completion", label_column}, _read_unpaired
        return "prompt_completion", {"prompt", "completion"}, _read_prompt_completion
    if "messages" in cols:
        return "conversation", {"messages"}, _read_messages
    if "text" in cols:
        return "text", {"text"}, _read_text
    if "prompt" in cols:
        return "prompt", {"prompt"}, _read_prompt
    if {"question", "answers"} <= cols:
        return "qa", {"question", "answers"}, _read_qa
    return None


def _refusal(kind: str, target: str, fmt: str) -> str | None:
    """Why rows of `kind` cannot feed `target`, in words the recipe author can act on."""
    if kind in _ACCEPTS[target]:
        return None
    what = f"the dataset ({fmt} layout) holds {_KIND_WORDS[kind]}"
    if target == "preference" and kind == "unpaired":
        return (
            f"{what}, which cannot be paired into chosen/rejected preferences: nothing says "
            "which desirable and undesirable completions belong together. Use the kto stage, "
            "which trains on unpaired rows directly."
        )
    if target == "language_modeling":
        return (
            f"{what}, but the language_modeling target needs a 'text' column of plain text. "
            "Conversational rows belong to the sft target, which formats them with the chat "
            "template."
        )
    if target == "preference":
        return f"{what}, but the preference target needs a chosen and a rejected response per row."
    if target == "unpaired":
        return (
            f"{what}, but the unpaired (KTO) target needs either chosen/rejected pairs or a "
            "boolean label per completion. For a label column, use format kto_tag and set "
            "label_column to its name."
        )
    if target == "sft" and kind == "text":
        return f"{what}, which have no roles; use the language_modeling target for plain text."
    if target == "sft" and kind == "unpaired":
        return (
            f"{what}; the sft target would train on the undesirable completions too. Use the "
            "kto stage, or keep only the desirable rows in a dataset of your own."
        )
    if target == "sft":
        return f"{what}, which have no responses for the sft target to train on."
    if target in ("qa", "labelled_qa"):
        return (f"{what}, but question answering (the idk and evaluate stages) needs a "
                "`question` and its gold `answers` per row; map yours with `columns:`.")
    if kind == "qa":
        return (f"{what}, which train nothing by themselves; the idk stage builds training "
                "data from them.")
    return f"{what}, which have no prompt for the prompt_only target."


def _emit(kind: str, target: str, rec: dict | None) -> list[dict]:
    if rec is None:  # a row the target leaves out on purpose (a probe's grey-zone question)
        return []
    if target == "prompt_only":
        return [{"prompt": _copy(rec["prompt"])}]
    if target == "sft":
        if kind == "prompt_completion":
            return [{"messages": _copy(rec["prompt"] + rec["completion"])}]
        if kind == "preference":
            return [{"messages": _copy(rec["prompt"] + rec["chosen"])}]
        return [{"messages": _copy(rec["messages"])}]
    if target == "unpaired" and kind == "preference":
        return [
            {"prompt": _copy(rec["prompt"]), "completion": _copy(rec["chosen"]), "label": True},
            {"prompt": _copy(rec["prompt"]), "completion": _copy(rec["rejected"]), "label": False},
        ]
    return [rec]


def _copy(messages: list[dict]) -> list[dict]:
    # Doubled KTO rows must not share message dicts: a later map() editing one would edit both.
    return [dict(m) for m in messages]


# --------------------------------------------------------------------------------------------
# readers: one row of a layout -> a validated record of its kind


def _read_text(row: Mapping, ctx: _Ctx) -> dict:
    text = _string(row, "text")
    if not text.strip():
        raise _RowError("text", "is empty")
    return {"text": text}


def _read_messages(row: Mapping, ctx: _Ctx) -> dict:
    return _dialogue(_messages(_get(row, "messages"), "messages"), "messages", ctx)


def _read_sharegpt(row: Mapping, ctx: _Ctx) -> dict:
    msgs = _messages(
        _get(row, "conversations"),
        "conversations",
        role_key="from",
        content_key="value",
        roles=_SHAREGPT_ROLES,
    )
    return _dialogue(_with_system(msgs, row), "conversations", ctx)


def _with_system(msgs: list[dict], row: Mapping) -> list[dict]:
    """LLaMA-Factory's `system` column (and a ShareGPT row's `tools` schema, as text) joined
    into the leading system message."""
    system = row.get("system")
    if system is not None and not isinstance(system, str):
        raise _RowError("system", f"must be a string, got {_type(system)}")
    tools = row.get("tools")
    if tools and not isinstance(tools, str):
        tools = json.dumps(tools, ensure_ascii=False)
    own = msgs[0]["content"] if msgs and msgs[0]["role"] == "system" else None
    parts = [p for p in (own, system, f"Tools you may call:\n{tools}" if tools else None)
             if p and p.strip()]
    if not parts or parts == [own]:
        return msgs
    rest = msgs[1:] if own is not None else msgs
    return [{"role": "system", "content": "\n\n".join(parts)}, *rest]


def _read_prompt(row: Mapping, ctx: _Ctx) -> dict:
    return {"prompt": _prompt(row, "prompt")}


def _read_prompt_completion(row: Mapping, ctx: _Ctx) -> dict:
    prompt = _prompt(row, "prompt")
    completion = _messages(_get(row, "completion"), "completion", default_role="assistant")
    return {"prompt": prompt, "completion": [_response(completion, "completion")]}


def _read_unpaired(row: Mapping, ctx: _Ctx) -> dict:
    rec = _read_prompt_completion(row, ctx)
    rec["label"] = _label(row.get(ctx.label_column), ctx.label_column)
    return rec


def _read_qa(row: Mapping, ctx: _Ctx) -> dict | None:
    question = _string(row, "question")
    if not question.strip():
        raise _RowError("question", "is empty")
    answers = _get(row, "answers")
    answers = [answers] if isinstance(answers, str) else answers
    if not isinstance(answers, (list, tuple)) or not answers or \
            not all(isinstance(a, str) and a.strip() for a in answers):
        raise _RowError("answers", "must be a non-empty string or list of non-empty strings, "
                                   f"got {_type(_get(row, 'answers'))}")
    rec = {"question": question, "answers": list(answers)}
    if row.get("known") is not None:  # a CSV's "False" is false
        rec["known"] = _label(row["known"], "known")
    if ctx.target != "labelled_qa":
        return rec
    if "known" not in rec and row.get("category") is not None:
        # An idk stage's probe rows: what a model knows is what the probe of it found; its
        # grey zone is left out.
        if row["category"] not in ("known", "unknown"):
            return None
        return {**rec, "known": row["category"] == "known"}
    if "known" not in rec:
        raise _RowError("known", "is missing: labelled questions need a boolean `known` (or an "
                                 "idk stage's probe `category`); map a column of yours to it "
                                 "with `columns: {yours: known}`")
    return rec


def _read_alpaca(row: Mapping, ctx: _Ctx) -> dict:
    instruction = _string(row, "instruction")
    if not instruction.strip():
        raise _RowError("instruction", "is empty")
    extra = row.get("input")
    if extra is not None and not isinstance(extra, str):
        raise _RowError("input", f"must be a string, got {_type(extra)}")
    text = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    output = _string(row, "output")
    if not output.strip():
        raise _RowError("output", "the response is empty")
    return {
        "prompt": _with_system(_alpaca_history(row.get("history")), row)
        + [{"role": "user", "content": text}],
        "completion": [{"role": "assistant", "content": output}],
    }


def _alpaca_history(history) -> list[dict]:
    """LLaMA-Factory's `history`: earlier [instruction, response] pairs, oldest first."""
    if history is None:
        return []
    if not isinstance(history, (list, tuple)):
        raise _RowError("history", f"must be a list of [instruction, response] pairs, got "
                                   f"{_type(history)}")
    out = []
    for i, pair in enumerate(history, start=1):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2
                and all(isinstance(x, str) for x in pair)):
            raise _RowError("history", f"entry {i} must be an [instruction, response] pair of "
                                       "strings")
        out += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return out


def _public_qa_reader(fmt: str):
    """TriviaQA, NQ-open, PopQA and SimpleQA rows read as `qa` rows (question, answers)."""
    def read(row: Mapping, ctx: _Ctx) -> dict | None:
        question_column = "problem" if fmt == "simpleqa" else "question"
        if fmt == "triviaqa":
            answer = _get(row, "answer")
            if not isinstance(answer, Mapping):
                raise _RowError("answer", f"must be TriviaQA's object with value and aliases, "
                                          f"got {_type(answer)}")
            answers = [answer.get("value"), *(answer.get("aliases") or [])]
            column = "answer"
        elif fmt == "popqa":
            answers = _get(row, "possible_answers")
            column = "possible_answers"
            if isinstance(answers, str):
                try:
                    answers = json.loads(answers)
                except json.JSONDecodeError:
                    raise _RowError(column, "must hold a JSON list of answers") from None
        else:
            answers, column = _get(row, "answer"), "answer"
        answers = [answers] if isinstance(answers, str) else answers
        if not isinstance(answers, (list, tuple)):
            raise _RowError(column, f"must be an answer or a list of answers, got {_type(answers)}")
        answers = list(dict.fromkeys(a for a in answers if isinstance(a, str) and a.strip()))
        if not answers:
            raise _RowError(column, "has no answer: each one is empty or not text")
        rest = {k: v for k, v in row.items() if k not in (question_column, "answers")}
        try:
            return _read_qa({**rest, "question": _get(row, question_column), "answers": answers},
                            ctx)
        except _RowError as exc:  # named as the file names it (SimpleQA's `problem`)
            if exc.column != "question":
                raise
            raise _RowError(question_column, exc.reason) from None
    return read


def _read_hh(row: Mapping, ctx: _Ctx) -> dict:
    chosen = _hh_messages(row.get("chosen"), "chosen")
    rejected = _hh_messages(row.get("rejected"), "rejected")
    return _pair_from_conversations(chosen, rejected)


def _read_explicit_pair(row: Mapping, ctx: _Ctx) -> dict:
    """prompt + chosen + rejected, where chosen/rejected are responses or whole conversations.

    UltraFeedback-binarized repeats the prompt inside chosen/rejected; then the conversations
    are authoritative and the prompt column is only a summary of them.
    """
    prompt_value = _get(row, "prompt")
    chosen = _messages(_get(row, "chosen"), "chosen", default_role="assistant")
    rejected = _messages(_get(row, "rejected"), "rejected", default_role="assistant")
    if len(chosen) > 1 or len(rejected) > 1:
        if len(chosen) <= 1 or len(rejected) <= 1:
            single, whole = ("chosen", "rejected") if len(chosen) <= 1 else ("rejected", "chosen")
            raise _RowError(
                single,
                f"holds a single message while '{whole}' holds a whole conversation; "
                "both must be one or the other",
            )
        return _pair_from_conversations(chosen, rejected)
    prompt = _messages(prompt_value, "prompt", default_role="user")
    _check_prompt(prompt, "prompt")
    return {
        "prompt": prompt,
        "chosen": [_response(chosen, "chosen")],
        "rejected": [_response(rejected, "rejected")],
    }


def _read_implicit_pair(row: Mapping, ctx: _Ctx) -> dict:
    chosen, rejected = _get(row, "chosen"), _get(row, "rejected")
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise _RowError(
            "rejected", "must be of the same kind as 'chosen': both strings or both message lists"
        )
    if isinstance(chosen, str):
        if _looks_hh(chosen):
            return _read_hh(row, ctx)
        return _pair_from_strings(chosen, rejected)
    return _pair_from_conversations(
        _messages(chosen, "chosen"), _messages(rejected, "rejected")
    )


# --------------------------------------------------------------------------------------------
# building blocks


def _type(value) -> str:
    return "null" if value is None else type(value).__name__


def _get(row: Mapping, column: str):
    value = row.get(column)
    if value is None:
        raise _RowError(column, "is missing")
    return value


def _string(row: Mapping, column: str) -> str:
    value = _get(row, column)
    if not isinstance(value, str):
        raise _RowError(column, f"must be a string, got {_type(value)}")
    return value


def _messages(
    value,
    column: str,
    *,
    default_role: str | None = None,
    role_key: str = "role",
    content_key: str = "content",
    roles: Mapping[str, str] = _ROLES,
) -> list[dict]:
    """Normalise a string or a list of messages to [{role, content}], checking each message."""
    if value is None:
        raise _RowError(column, "is missing")
    if isinstance(value, str):
        if default_role is None:
            raise _RowError(column, "must be a list of messages, got a string")
        return [{"role": default_role, "content": value}]
    if not isinstance(value, (list, tuple)):
        expected = "a string or a list of messages" if default_role else "a list of messages"
        raise _RowError(column, f"must be {expected}, got {_type(value)}")
    out = []
    for i, message in enumerate(value, start=1):
        if not isinstance(message, Mapping):
            raise _RowError(
                column,
                f"turn {i} must be an object with '{role_key}' and '{content_key}', "
                f"got {_type(message)}",
            )
        role = message.get(role_key)
        if role is None:
            raise _RowError(column, f"turn {i} has no '{role_key}'")
        if not isinstance(role, str) or role not in roles:
            raise _RowError(
                column, f"turn {i} has unknown role {role!r}; known roles: {', '.join(roles)}"
            )
        content = message.get(content_key)
        if content is None:
            raise _RowError(column, f"turn {i} has no '{content_key}'")
        if not isinstance(content, str):
            raise _RowError(
                column, f"turn {i} '{content_key}' must be a string, got {_type(content)}"
            )
        out.append({"role": roles[role], "content": content})
    return out


def _check_order(msgs: list[dict], column: str) -> None:
    start = 1 if msgs and msgs[0]["role"] == "system" else 0
    for i in range(start, len(msgs)):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if msgs[i]["role"] != expected and not (expected == "user" and msgs[i]["role"] == "tool"):
            raise _RowError(
                column,
                f"turn {i + 1} has role '{msgs[i]['role']}' where '{expected}' was expected "
                f"({_ORDER_RULE})",
            )


def _check_prompt(msgs: list[dict], column: str) -> None:
    _check_order(msgs, column)
    if not any(m["role"] == "user" for m in msgs):
        raise _RowError(column, "has no user message to serve as the prompt")
    last = msgs[-1]
    if last["role"] != "user":
        raise _RowError(column, f"the prompt must end with a user turn, not '{last['role']}'")
    if not last["content"].strip():
        raise _RowError(column, f"turn {len(msgs)} (the user prompt) is empty")


def _prompt(row: Mapping, column: str) -> list[dict]:
    prompt = _messages(_get(row, column), column, default_role="user")
    _check_prompt(prompt, column)
    return prompt


def _response(msgs: list[dict], column: str) -> dict:
    if len(msgs) != 1:
        raise _RowError(column, f"must hold exactly one assistant message, holds {len(msgs)}")
    message = msgs[0]
    if message["role"] != "assistant":
        raise _RowError(
            column, f"the response must be an assistant turn, not '{message['role']}'"
        )
    if not message["content"].strip():
        raise _RowError(column, "the response is empty")
    return message


def _dialogue(msgs: list[dict], column: str, ctx: _Ctx) -> dict:
    """A whole conversation: sft needs it to end in an answer; a PPO prompt may end on a user."""
    if not msgs:
        raise _RowError(column, "is empty")
    _check_order(msgs, column)
    if ctx.target == "prompt_only":
        prompt = msgs[:-1] if msgs[-1]["role"] == "assistant" else msgs
        _check_prompt(prompt, column)
        return {"prompt": prompt}
    if msgs[-1]["role"] != "assistant":
        raise _RowError(column, f"must end with an assistant turn, not '{msgs[-1]['role']}'")
    for i, message in enumerate(msgs, start=1):
        if message["role"] == "assistant" and not message["content"].strip():
            raise _RowError(column, f"turn {i} (assistant) is empty")
    return {"messages": msgs}


def _split_last(msgs: list[dict], column: str) -> tuple[list[dict], dict]:
    if not msgs:
        raise _RowError(column, "is empty")
    _check_order(msgs, column)
    if msgs[-1]["role"] != "assistant":
        raise _RowError(
            column, f"must end with an assistant response, not a '{msgs[-1]['role']}' turn"
        )
    prompt = msgs[:-1]
    _check_prompt(prompt, column)
    return prompt, _response(msgs[-1:], column)


def _pair_from_conversations(chosen: list[dict], rejected: list[dict]) -> dict:
    """Implicit prompt: everything before the final assistant turn, which both must share."""
    prompt, chosen_response = _split_last(chosen, "chosen")
    rejected_prompt, rejected_response = _split_last(rejected, "rejected")
    if rejected_prompt != prompt:
        raise _RowError(
            "rejected",
            "does not share the conversation before its last assistant turn with 'chosen'; "
            "both must hold the same prompt and differ only in the final response",
        )
    return {"prompt": prompt, "chosen": [chosen_response], "rejected": [rejected_response]}


def _pair_from_strings(chosen: str, rejected: str) -> dict:
    """Implicit prompt in plain strings: the shared leading text, cut back to a word boundary."""
    shared = os.path.commonprefix([chosen, rejected])
    cut = len(shared)
    while cut > 0 and not shared[cut - 1].isspace():
        cut -= 1
    if cut == 0:
        cut = len(shared)
    prompt = chosen[:cut].strip()
    if not prompt:
        raise _RowError(
            "chosen",
            "shares no leading prompt text with 'rejected' (implicit-prompt rows must both "
            "start with the same prompt)",
        )
    chosen_text, rejected_text = chosen[cut:].strip(), rejected[cut:].strip()
    if not chosen_text:
        raise _RowError("chosen", "the response is empty")
    if not rejected_text:
        raise _RowError("rejected", "the response is empty")
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen_text}],
        "rejected": [{"role": "assistant", "content": rejected_text}],
    }


def _looks_hh(value) -> bool:
    return isinstance(value, str) and _HH_START.match(value) is not None


def _hh_messages(value, column: str) -> list[dict]:
    if value is None:
        raise _RowError(column, "is missing")
    if not isinstance(value, str):
        raise _RowError(
            column,
            "must be a transcript string ('\\n\\nHuman: ...\\n\\nAssistant: ...'), "
            f"got {_type(value)}",
        )
    parts = _HH_TURN.split(value)
    if len(parts) == 1:
        raise _RowError(column, "has no '\\n\\nHuman:' or '\\n\\nAssistant:' turns")
    if parts[0].strip():
        raise _RowError(column, "has text before the first 'Human:' turn")
    return [
        {"role": "user" if who == "Human" else "assistant", "content": text.strip()}
        for who, text in zip(parts[1::2], parts[2::2])
    ]


def _label(value, column: str) -> bool:
    if value is None:
        raise _RowError(column, "is missing")
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()  # numpy scalars from pandas- or arrow-backed rows
        except (TypeError, ValueError):
            pass
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("true", "1"):
            return True
        if word in ("false", "0"):
            return False
    raise _RowError(
        column,
        f"must be a boolean label (true/false, 1/0, or the strings 'true'/'false'), got {value!r}",
    )

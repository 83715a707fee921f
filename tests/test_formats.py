"""Row conversion: every layout's exact output, and malformed rows reported by file/row/column."""

import pytest

from align.data.formats import (
    FORMATS,
    TARGETS,
    ConversionResult,
    RowProblem,
    convert_rows,
    detect_format,
    required_columns,
)
from align.errors import AlignError, DataError

SRC = "data/train.jsonl"


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


def convert(rows, target, **kwargs):
    return convert_rows(rows, source=SRC, target=target, **kwargs)


def fails(rows, target, **kwargs):
    with pytest.raises(DataError) as info:
        convert(rows, target, **kwargs)
    return str(info.value)


# ------------------------------------------------------------------------------------------
# layouts


HH_ROW = {
    "chosen": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: What is 2+2?\n\nAssistant: 4.",
    "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: What is 2+2?\n\nAssistant: 5.",
}
HH_PROMPT = [user("Hi there"), assistant("Hello!"), user("What is 2+2?")]


def test_hh_to_preference():
    result = convert([HH_ROW], "preference")
    assert isinstance(result, ConversionResult)
    assert result.fmt == "hh"
    assert result.dropped == []
    assert result.rows == [
        {"prompt": HH_PROMPT, "chosen": [assistant("4.")], "rejected": [assistant("5.")]}
    ]


def test_hh_to_unpaired_doubles_each_pair():
    result = convert([HH_ROW, HH_ROW], "unpaired", fmt="hh")
    desirable = {"prompt": HH_PROMPT, "completion": [assistant("4.")], "label": True}
    undesirable = {"prompt": HH_PROMPT, "completion": [assistant("5.")], "label": False}
    assert result.rows == [desirable, undesirable, desirable, undesirable]


def test_doubled_rows_do_not_share_messages():
    rows = convert([HH_ROW], "unpaired").rows
    rows[0]["prompt"][0]["content"] = "edited"
    assert rows[1]["prompt"][0]["content"] == "Hi there"


def test_hh_rejected_with_different_prompt():
    row = dict(HH_ROW, rejected="\n\nHuman: Bye\n\nAssistant: 5.")
    assert fails([row], "preference") == (
        f"{SRC}, row 1, column 'rejected': does not share the conversation before its last "
        "assistant turn with 'chosen'; both must hold the same prompt and differ only in the "
        "final response"
    )


def test_hh_transcript_must_end_with_assistant():
    row = dict(HH_ROW, chosen="\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: More?")
    assert fails([row], "preference", fmt="hh") == (
        f"{SRC}, row 1, column 'chosen': must end with an assistant response, not a 'user' turn"
    )


def test_hh_transcript_must_be_a_string():
    row = dict(HH_ROW, chosen=[user("Hi"), assistant("Hello")])
    msg = fails([row], "preference", fmt="hh")
    assert msg.startswith(f"{SRC}, row 1, column 'chosen': must be a transcript string")


ULTRAFEEDBACK_ROW = {
    "prompt": "Name a prime.",
    "prompt_id": "abc",
    "chosen": [user("Name a prime."), assistant("7")],
    "rejected": [user("Name a prime."), assistant("8")],
    "messages": [user("Name a prime."), assistant("7")],
    "score_chosen": 9.0,
    "score_rejected": 2.0,
}


def test_ultrafeedback_to_preference():
    result = convert([ULTRAFEEDBACK_ROW], "preference")
    assert result.fmt == "ultrafeedback"
    assert result.rows == [
        {
            "prompt": [user("Name a prime.")],
            "chosen": [assistant("7")],
            "rejected": [assistant("8")],
        }
    ]


def test_ultrafeedback_with_single_responses_uses_prompt_column():
    row = {"prompt": "Name a prime.", "chosen": [assistant("7")], "rejected": [assistant("8")]}
    assert detect_format(set(row), sample=row) == "ultrafeedback"
    assert convert([row], "preference").rows == [
        {
            "prompt": [user("Name a prime.")],
            "chosen": [assistant("7")],
            "rejected": [assistant("8")],
        }
    ]


def test_ultrafeedback_mixed_response_shapes_refused():
    row = dict(ULTRAFEEDBACK_ROW, rejected=[assistant("8")])
    assert fails([row], "preference") == (
        f"{SRC}, row 1, column 'rejected': holds a single message while 'chosen' holds a whole "
        "conversation; both must be one or the other"
    )


def test_ultrafeedback_to_sft_trains_on_chosen():
    assert convert([ULTRAFEEDBACK_ROW], "sft").rows == [
        {"messages": [user("Name a prime."), assistant("7")]}
    ]


def test_alpaca_with_and_without_input():
    rows = [
        {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
        {"instruction": "Say hi.", "input": "", "output": "Hi!"},
        {"instruction": "Say bye.", "output": "Bye!"},
    ]
    result = convert(rows, "sft")
    assert result.fmt == "alpaca"
    assert result.rows == [
        {"messages": [user("Translate to French.\n\ncat"), assistant("chat")]},
        {"messages": [user("Say hi."), assistant("Hi!")]},
        {"messages": [user("Say bye."), assistant("Bye!")]},
    ]


def test_alpaca_to_prompt_only():
    rows = [{"instruction": "Translate to French.", "input": "cat", "output": "chat"}]
    assert convert(rows, "prompt_only").rows == [{"prompt": [user("Translate to French.\n\ncat")]}]


SHAREGPT_ROW = {
    "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello."},
        {"from": "human", "value": "Capital of France?"},
        {"from": "gpt", "value": "Paris."},
    ]
}
SHAREGPT_MESSAGES = [
    system("Be brief."),
    user("Hi"),
    assistant("Hello."),
    user("Capital of France?"),
    assistant("Paris."),
]


def test_sharegpt_with_system_turn_to_sft():
    result = convert([SHAREGPT_ROW], "sft")
    assert result.fmt == "sharegpt"
    assert result.rows == [{"messages": SHAREGPT_MESSAGES}]


def test_sharegpt_unknown_role():
    row = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "bing", "value": "Yo"}]}
    assert fails([row], "sft") == (
        f"{SRC}, row 1, column 'conversations': turn 2 has unknown role 'bing'; "
        "known roles: system, human, user, gpt, assistant, function_call, observation"
    )


KTO_ROWS = [
    {"prompt": "Q1", "completion": "A1", "is_good": True},
    {"prompt": "Q2", "completion": "A2", "is_good": "FALSE"},
    {"prompt": "Q3", "completion": "A3", "is_good": 1},
    {"prompt": "Q4", "completion": "A4", "is_good": "0"},
]


def test_kto_tag_with_custom_label_column():
    result = convert(KTO_ROWS, "unpaired", label_column="is_good")
    assert result.fmt == "kto_tag"
    assert result.rows == [
        {"prompt": [user("Q1")], "completion": [assistant("A1")], "label": True},
        {"prompt": [user("Q2")], "completion": [assistant("A2")], "label": False},
        {"prompt": [user("Q3")], "completion": [assistant("A3")], "label": True},
        {"prompt": [user("Q4")], "completion": [assistant("A4")], "label": False},
    ]


def test_kto_tag_refuses_yes_no():
    # Decision: only true/false, 1/0 and their strings count as booleans; "yes" is refused.
    rows = KTO_ROWS[:2] + [{"prompt": "Q3", "completion": "A3", "is_good": "yes"}]
    assert fails(rows, "unpaired", fmt="kto_tag", label_column="is_good") == (
        f"{SRC}, row 3, column 'is_good': must be a boolean label (true/false, 1/0, or the "
        "strings 'true'/'false'), got 'yes'"
    )


@pytest.mark.parametrize(
    "value, expected", [(True, True), (False, False), (1, True), (0, False), ("True", True),
                        (" false ", False), ("1", True), ("0", False)]
)
def test_label_values_accepted(value, expected):
    rows = [{"prompt": "Q", "completion": "A", "label": value}]
    assert convert(rows, "unpaired").rows[0]["label"] is expected


@pytest.mark.parametrize("value", ["yes", "no", 2, -1, 1.0, "", [True]])
def test_label_values_refused(value):
    rows = [{"prompt": "Q", "completion": "A", "label": value}]
    assert "column 'label': must be a boolean label" in fails(rows, "unpaired")


def test_missing_label():
    rows = [{"prompt": "Q", "completion": "A", "label": None}]
    assert fails(rows, "unpaired") == f"{SRC}, row 1, column 'label': is missing"


# TRL's own formats


def test_trl_standard_language_modeling():
    result = convert([{"text": "The sky is blue."}], "language_modeling")
    assert result.fmt == "trl"
    assert result.rows == [{"text": "The sky is blue."}]


def test_trl_conversational_messages_to_sft_drops_extra_keys():
    row = {"messages": [system("Be kind."), user("Hi"), {**assistant("Hello"), "name": None}]}
    assert convert([row], "sft").rows == [
        {"messages": [system("Be kind."), user("Hi"), assistant("Hello")]}
    ]


def test_trl_prompt_completion_standard_and_conversational_to_sft():
    rows = [
        {"prompt": "The sky is", "completion": " blue."},
        {"prompt": [user("Colour of the sky?")], "completion": [assistant("Blue.")]},
    ]
    assert convert(rows, "sft").rows == [
        {"messages": [user("The sky is"), assistant(" blue.")]},
        {"messages": [user("Colour of the sky?"), assistant("Blue.")]},
    ]


def test_trl_explicit_prompt_standard():
    row = {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
    assert convert([row], "preference").rows == [
        {"prompt": [user("The sky is")], "chosen": [assistant(" blue.")],
         "rejected": [assistant(" green.")]}
    ]


def test_trl_explicit_prompt_conversational():
    row = {
        "prompt": [system("Be brief."), user("Sky colour?")],
        "chosen": [assistant("Blue.")],
        "rejected": [assistant("Green.")],
    }
    result = convert([row], "preference")
    assert result.fmt == "trl"
    assert result.rows == [row]


def test_trl_implicit_prompt_conversational():
    row = {
        "chosen": [user("Sky colour?"), assistant("Blue.")],
        "rejected": [user("Sky colour?"), assistant("Green.")],
    }
    result = convert([row], "preference")
    assert result.fmt == "trl"
    assert result.rows == [
        {"prompt": [user("Sky colour?")], "chosen": [assistant("Blue.")],
         "rejected": [assistant("Green.")]}
    ]


def test_trl_implicit_prompt_standard_cuts_at_word_boundary():
    row = {"chosen": "The sky is blue.", "rejected": "The sky is black."}
    assert convert([row], "preference").rows == [
        {"prompt": [user("The sky is")], "chosen": [assistant("blue.")],
         "rejected": [assistant("black.")]}
    ]


def test_trl_implicit_prompt_standard_without_shared_text():
    row = {"chosen": "Blue.", "rejected": "Green."}
    assert fails([row], "preference") == (
        f"{SRC}, row 1, column 'chosen': shares no leading prompt text with 'rejected' "
        "(implicit-prompt rows must both start with the same prompt)"
    )


def test_trl_implicit_strings_in_hh_style_are_parsed_as_hh():
    assert convert([HH_ROW], "preference", fmt="trl").rows == convert([HH_ROW], "preference").rows


def test_trl_unpaired_standard_and_conversational():
    rows = [
        {"prompt": "The sky is", "completion": " blue.", "label": True},
        {"prompt": [user("Sky?")], "completion": [assistant("Green.")], "label": False},
    ]
    assert convert(rows, "unpaired").rows == [
        {"prompt": [user("The sky is")], "completion": [assistant(" blue.")], "label": True},
        {"prompt": [user("Sky?")], "completion": [assistant("Green.")], "label": False},
    ]


def test_trl_prompt_only():
    rows = [{"prompt": "The sky is"}, {"prompt": [system("Be brief."), user("Sky?")]}]
    assert convert(rows, "prompt_only").rows == [
        {"prompt": [user("The sky is")]},
        {"prompt": [system("Be brief."), user("Sky?")]},
    ]


# ------------------------------------------------------------------------------------------
# prompt_only extraction


def test_prompt_only_from_sft_rows_cuts_last_assistant_turn():
    rows = [
        SHAREGPT_ROW,
        {"conversations": [{"from": "human", "value": "Open question"}]},
    ]
    assert convert(rows, "prompt_only").rows == [
        {"prompt": SHAREGPT_MESSAGES[:-1]},
        {"prompt": [user("Open question")]},
    ]


def test_prompt_only_from_messages_and_preference_and_unpaired_rows():
    messages = [{"messages": [user("Hi"), assistant("Hello")]}]
    assert convert(messages, "prompt_only").rows == [{"prompt": [user("Hi")]}]
    assert convert([HH_ROW], "prompt_only").rows == [{"prompt": HH_PROMPT}]
    assert convert([ULTRAFEEDBACK_ROW], "prompt_only").rows == [
        {"prompt": [user("Name a prime.")]}
    ]
    assert convert(KTO_ROWS[:1], "prompt_only", label_column="is_good").rows == [
        {"prompt": [user("Q1")]}
    ]


def test_sft_needs_the_conversation_to_end_with_assistant():
    row = {"messages": [user("Hi")]}
    assert fails([row], "sft") == (
        f"{SRC}, row 1, column 'messages': must end with an assistant turn, not 'user'"
    )


# ------------------------------------------------------------------------------------------
# malformed rows


def test_missing_field_names_row_and_column():
    rows = [
        {"prompt": "Q1", "chosen": "A", "rejected": "B"},
        {"prompt": "Q2", "chosen": "A", "rejected": None},
    ]
    assert fails(rows, "preference") == f"{SRC}, row 2, column 'rejected': is missing"


def test_missing_key_in_later_row():
    rows = [{"text": "one"}, {"txt": "two"}]
    assert fails(rows, "language_modeling") == f"{SRC}, row 2, column 'text': is missing"


def test_missing_column_is_reported_before_rows():
    rows = [{"prompt": "Q", "completion": "A"}]
    msg = fails(rows, "unpaired", fmt="kto_tag", label_column="is_good")
    assert msg == (
        f"{SRC}: the kto_tag layout needs the column(s) is_good; the dataset has completion, prompt"
    )


def test_empty_response():
    rows = [
        {"instruction": "Say hi.", "output": "Hi"},
        {"instruction": "Say bye.", "output": "Bye"},
        {"instruction": "Say yes.", "output": "  \n"},
    ]
    assert fails(rows, "sft") == f"{SRC}, row 3, column 'output': the response is empty"


def test_empty_response_in_preference():
    row = {"prompt": "Q", "chosen": [assistant(" ")], "rejected": [assistant("B")]}
    assert fails([row], "preference") == f"{SRC}, row 1, column 'chosen': the response is empty"


def test_roles_out_of_order():
    rows = [
        {"messages": [user("Hi"), assistant("Hello")]},
        {"messages": [user("Hi"), user("Again"), assistant("Hello")]},
    ]
    assert fails(rows, "sft") == (
        f"{SRC}, row 2, column 'messages': turn 2 has role 'user' where 'assistant' was expected "
        "(after an optional leading system message, turns must alternate user, assistant)"
    )


def test_system_message_only_leading():
    row = {"messages": [user("Hi"), system("Late"), assistant("Hello")]}
    assert "turn 2 has role 'system' where 'assistant' was expected" in fails([row], "sft")


def test_response_must_be_assistant_turn():
    row = {"prompt": [user("Q")], "chosen": [user("A")], "rejected": [assistant("B")]}
    assert fails([row], "preference") == (
        f"{SRC}, row 1, column 'chosen': the response must be an assistant turn, not 'user'"
    )


def test_unknown_role():
    row = {"messages": [user("Hi"), {"role": "bot", "content": "Hello"}]}
    assert fails([row], "sft") == (
        f"{SRC}, row 1, column 'messages': turn 2 has unknown role 'bot'; "
        "known roles: system, user, assistant"
    )


def test_non_string_content():
    row = {"messages": [user("Hi"), {"role": "assistant", "content": [{"type": "text"}]}]}
    assert fails([row], "sft") == (
        f"{SRC}, row 1, column 'messages': turn 2 'content' must be a string, got list"
    )


def test_non_string_text():
    assert fails([{"text": 3}], "language_modeling") == (
        f"{SRC}, row 1, column 'text': must be a string, got int"
    )


def test_row_that_is_not_a_mapping():
    assert fails([{"text": "a"}, ["b"]], "language_modeling") == (
        f"{SRC}, row 2: a row must map column names to values, got list"
    )


def test_data_error_is_user_facing():
    with pytest.raises(AlignError) as info:
        convert([{"text": ""}], "language_modeling")
    assert info.value.exit_code == 2
    assert (info.value.path, info.value.row, info.value.column) == (SRC, 1, "text")


# ------------------------------------------------------------------------------------------
# drop mode


def test_drop_mode_skips_and_counts():
    rows = [
        {"messages": [user("1"), assistant("one")]},
        {"messages": [user("2"), assistant("  ")]},
        {"messages": [user("3"), assistant("three")]},
        {"messages": None},
        {"messages": [user("5"), assistant("five")]},
    ]
    result = convert(rows, "sft", on_error="drop")
    assert [r["messages"][0]["content"] for r in result.rows] == ["1", "3", "5"]
    assert result.dropped == [
        RowProblem(2, "messages", "turn 2 (assistant) is empty"),
        RowProblem(4, "messages", "is missing"),
    ]
    assert str(result.dropped[1]) == "row 4, column 'messages': is missing"


def test_drop_mode_drops_both_halves_of_a_bad_pair():
    bad = dict(HH_ROW, rejected="\n\nHuman: Hi there\n\nAssistant:")
    result = convert([HH_ROW, bad], "unpaired", on_error="drop")
    assert len(result.rows) == 2
    assert result.dropped == [RowProblem(2, "rejected", "the response is empty")]


def test_drop_mode_with_every_row_bad_fails():
    rows = [{"text": ""}, {"text": " "}]
    assert fails(rows, "language_modeling", on_error="drop") == (
        f"{SRC}: all 2 rows are malformed; the first: row 1, column 'text': is empty"
    )


# ------------------------------------------------------------------------------------------
# refusals and detection


def test_auto_detect_failure_lists_columns_and_layouts():
    with pytest.raises(AlignError) as info:
        convert([{"query": "Q", "reply": "A"}], "sft")
    msg = str(info.value)
    assert msg.startswith(
        f"{SRC}: cannot tell the dataset's layout from its columns: query, reply."
    )
    for name in ("trl", "hh", "ultrafeedback", "alpaca", "sharegpt", "kto_tag"):
        assert f"  - {name}: " in msg
    assert "set the dataset's `format` in the recipe" in msg


def test_unpaired_to_preference_refused():
    rows = [{"prompt": "Q", "completion": "A", "label": True}]
    with pytest.raises(AlignError) as info:
        convert(rows, "preference")
    msg = str(info.value)
    assert not isinstance(info.value, DataError)
    assert msg.startswith(f"{SRC}: the dataset (trl layout) holds unpaired rows")
    assert "cannot be paired into chosen/rejected preferences" in msg
    assert "Use the kto stage" in msg


@pytest.mark.parametrize(
    "rows, target, words",
    [
        ([{"messages": [user("Hi"), assistant("Yo")]}], "language_modeling", "needs a 'text'"),
        ([{"text": "t"}], "sft", "use the language_modeling target"),
        ([{"instruction": "i", "output": "o"}], "preference", "chosen and a rejected"),
        ([{"instruction": "i", "output": "o"}], "unpaired", "use format kto_tag"),
        ([{"prompt": "Q", "completion": "A", "label": True}], "sft", "undesirable completions"),
        ([{"prompt": "Q"}], "sft", "no responses"),
        ([{"text": "t"}], "prompt_only", "no prompt"),
    ],
)
def test_incompatible_targets_refused(rows, target, words):
    with pytest.raises(AlignError, match=words):
        convert(rows, target)


@pytest.mark.parametrize(
    "columns, sample, expected",
    [
        ({"chosen", "rejected"}, HH_ROW, "hh"),
        ({"chosen", "rejected"}, None, "trl"),
        (set(ULTRAFEEDBACK_ROW), None, "ultrafeedback"),
        ({"prompt", "chosen", "rejected"}, None, "trl"),
        ({"instruction", "input", "output"}, None, "alpaca"),
        ({"conversations", "id"}, None, "sharegpt"),
        ({"text"}, None, "trl"),
        ({"messages"}, None, "trl"),
        ({"prompt", "completion", "label"}, None, "trl"),
        ({"prompt"}, None, "trl"),
    ],
)
def test_detect_format(columns, sample, expected):
    assert detect_format(columns, sample=sample) == expected


def test_detect_kto_tag_needs_the_label_column_name():
    cols = {"prompt", "completion", "is_good"}
    assert detect_format(cols, label_column="is_good") == "kto_tag"
    assert detect_format(cols) == "trl"  # plain prompt/completion; the tag is not recognised


def test_empty_dataset():
    assert fails([], "sft") == f"{SRC}: the dataset has no rows"


def test_unknown_names_refused():
    with pytest.raises(AlignError, match="unknown dataset format 'csv'"):
        convert([{"text": "t"}], "language_modeling", fmt="csv")
    with pytest.raises(AlignError, match="unknown target 'dpo'"):
        convert([{"text": "t"}], "dpo")
    with pytest.raises(AlignError, match="on_error must be 'fail' or 'drop'"):
        convert([{"text": "t"}], "language_modeling", on_error="skip")


def test_format_and_target_names():
    assert FORMATS == ("auto", "trl", "hh", "ultrafeedback", "alpaca", "sharegpt", "kto_tag", "qa",
                       "triviaqa", "nq_open", "popqa", "simpleqa")
    assert TARGETS == ("language_modeling", "sft", "preference", "unpaired", "prompt_only", "qa",
                       "labelled_qa")


# ------------------------------------------------------------------------------------------
# required_columns


@pytest.mark.parametrize(
    "fmt, target, expected",
    [
        ("hh", "preference", {"chosen", "rejected"}),
        ("hh", "unpaired", {"chosen", "rejected"}),
        ("ultrafeedback", "preference", {"prompt", "chosen", "rejected"}),
        ("alpaca", "sft", {"instruction", "output"}),
        ("sharegpt", "prompt_only", {"conversations"}),
        ("kto_tag", "unpaired", {"prompt", "completion", "is_good"}),
        ("trl", "language_modeling", {"text"}),
        ("trl", "sft", {"messages"}),
        ("trl", "preference", {"chosen", "rejected"}),
        ("trl", "unpaired", {"prompt", "completion", "is_good"}),
        ("trl", "prompt_only", {"prompt"}),
    ],
)
def test_required_columns(fmt, target, expected):
    assert required_columns(fmt, target, label_column="is_good") == expected


def test_required_columns_from_dataset_columns():
    cols = {"prompt", "chosen", "rejected", "id"}
    assert required_columns("trl", "preference", columns=cols) == {"prompt", "chosen", "rejected"}
    assert required_columns("auto", "sft", columns={"prompt", "completion"}) == {
        "prompt",
        "completion",
    }


def test_required_columns_refuses_impossible_targets():
    with pytest.raises(AlignError, match="Use the kto stage"):
        required_columns("kto_tag", "preference")
    with pytest.raises(AlignError, match="pass the dataset's columns"):
        required_columns("auto", "sft")
    with pytest.raises(AlignError, match="cannot tell the dataset's layout"):
        required_columns("auto", "sft", columns={"question"})

"""Unit tests for the @@tokenhub directive grammar (routing spec section 13)."""

from __future__ import annotations

import copy

import pytest

from pipeline.types import Message
from stages.directive_syntax import (
    SCAN_WINDOW_BYTES,
    DirectiveError,
    Directives,
    parse_directives,
    strip_directives,
)

MODES = frozenset({"cheap", "normal", "high_confidence", "planning", "adversarial", "vote", "refine", "thompson"})


def user(content: str) -> Message:
    return Message(role="user", content=content)


def parse(*contents: str) -> Directives | None:
    return parse_directives([user(c) for c in contents], MODES)


def strip_one(content: str, role: str = "user") -> str:
    return strip_directives([Message(role=role, content=content)])[0].content


# --- spec examples -----------------------------------------------------------------------------------------


def test_spec_example_single_line_with_following_text() -> None:
    content = "@@tokenhub mode=cheap budget=0.01\nSummarise this"
    assert parse(content) == Directives(mode="cheap", max_budget_usd=0.01)
    assert strip_one(content) == "Summarise this"


def test_spec_example_marker_after_text_on_last_line() -> None:
    content = "Please help @@tokenhub latency=5000"
    assert parse(content) == Directives(max_latency_ms=5000)
    assert strip_one(content) == "Please help"


def test_spec_example_block() -> None:
    content = "@@tokenhub\nmode=high_confidence\nmin_weight=8\n@@end\nQuestion"
    assert parse(content) == Directives(mode="high_confidence", min_weight=8)
    assert strip_one(content) == "Question"


def test_spec_example_unknown_mode_ignored_but_directive_still_found_and_stripped() -> None:
    d = parse("@@tokenhub mode=turbo")
    assert d is not None
    assert d.mode is None
    assert len(d.ignored) == 1 and "turbo" in d.ignored[0]
    assert strip_one("@@tokenhub mode=turbo") == ""


# --- parsing: discovery -------------------------------------------------------------------------------------


def test_no_directive_returns_none() -> None:
    assert parse("Just a normal message") is None
    assert parse_directives([], MODES) is None


def test_single_line_all_keys() -> None:
    d = parse('@@tokenhub mode=cheap budget=0.5 latency=5000 min_weight=5 output_schema={"type":"object"}')
    assert d == Directives(
        mode="cheap",
        max_budget_usd=0.5,
        max_latency_ms=5000,
        min_weight=5,
        output_schema={"type": "object"},
    )


def test_single_line_tokens_split_on_any_whitespace() -> None:
    assert parse("@@tokenhub \t mode=cheap\t\tlatency=10  \r\nrest") == Directives(mode="cheap", max_latency_ms=10)


def test_marker_need_not_start_a_line() -> None:
    assert parse("intro text\nsee @@tokenhub min_weight=3 please") == Directives(
        min_weight=3, ignored=("token 'please' has no '='",)
    )


@pytest.mark.parametrize("role", ["system", "assistant", "tool", "developer"])
def test_non_user_messages_are_not_parsed(role: str) -> None:
    msgs = [Message(role=role, content="@@tokenhub mode=cheap")]
    assert parse_directives(msgs, MODES) is None


def test_user_directive_found_after_system_directive() -> None:
    msgs = [
        Message(role="system", content="@@tokenhub mode=cheap"),
        Message(role="user", content="@@tokenhub mode=planning"),
    ]
    assert parse_directives(msgs, MODES) == Directives(mode="planning")


def test_first_directive_wins() -> None:
    assert parse("@@tokenhub mode=cheap", "@@tokenhub mode=vote budget=1") == Directives(mode="cheap")


def test_first_occurrence_within_a_message_wins() -> None:
    assert parse("@@tokenhub mode=cheap\n@@tokenhub mode=vote") == Directives(mode="cheap")


def test_a_note_quoting_unprintable_client_text_stays_short() -> None:
    # repr writes each of these as '\\U0001da8c' or '\\x1b': 64 of them once made a note of ~650 characters.
    for filler in ("\U0001da8c" * 80, "\x1b" * 80, "a" * 80):
        d = parse(f"@@tokenhub {filler}")
        assert d is not None and len(d.ignored) == 1
        assert len(d.ignored[0]) < 100, d.ignored[0]
    assert parse("@@tokenhub mode=turbo").ignored == ("mode 'turbo' is not an allowed mode",)


def test_first_directive_wins_even_when_all_its_tokens_are_ignored() -> None:
    d = parse("@@tokenhub nonsense", "@@tokenhub mode=cheap")
    assert d is not None
    assert d.mode is None
    assert d.ignored == ("token 'nonsense' has no '='",)


def test_bare_marker_without_newline_is_skipped() -> None:
    # Blank first line and no newline: neither form, so scanning continues.
    assert parse("hello @@tokenhub", "@@tokenhub mode=cheap") == Directives(mode="cheap")
    assert parse("@@tokenhub   ") is None


# --- parsing: block form ------------------------------------------------------------------------------------


def test_block_trailing_whitespace_and_blank_lines() -> None:
    content = "@@tokenhub   \t\n\n  mode=cheap  \n\n\t budget=2 \t\n   \n@@end\nQ"
    assert parse(content) == Directives(mode="cheap", max_budget_usd=2.0)


def test_block_with_crlf_line_endings() -> None:
    assert parse("@@tokenhub\r\nmode=cheap\r\nlatency=100\r\n@@end\r\nQ") == Directives(
        mode="cheap", max_latency_ms=100
    )


def test_block_end_marker_may_follow_a_value_on_the_same_line() -> None:
    # The body runs up to the first "@@end", wherever it is.
    assert parse("@@tokenhub\nmode=cheap@@end") == Directives(mode="cheap")


def test_empty_block_is_a_directive_with_nothing_set() -> None:
    assert parse("@@tokenhub\n@@end\nQ") == Directives()


def test_block_lines_are_whole_tokens_not_whitespace_split() -> None:
    # "mode=cheap budget=1" on one block line is a single key with value "cheap budget=1".
    d = parse("@@tokenhub\nmode=cheap budget=1\n@@end")
    assert d is not None
    assert d.mode is None and d.max_budget_usd is None
    assert len(d.ignored) == 1


def test_block_without_end_is_skipped_and_later_user_message_used() -> None:
    msgs = [
        user("@@tokenhub\nmode=cheap\nno terminator"),
        Message(role="assistant", content="ok"),
        user("@@tokenhub latency=250"),
    ]
    assert parse_directives(msgs, MODES) == Directives(max_latency_ms=250)


def test_block_without_end_alone_means_no_directive() -> None:
    assert parse("@@tokenhub\nmode=cheap\n") is None


def test_block_whose_end_lies_beyond_the_window_is_skipped() -> None:
    content = "@@tokenhub\nmode=cheap\n" + "x" * SCAN_WINDOW_BYTES + "\n@@end\nQ"
    assert parse(content) is None


# --- parsing: tokens and values -----------------------------------------------------------------------------


def test_tokens_without_equals_and_unknown_keys_are_noted() -> None:
    d = parse("@@tokenhub hello mode=cheap colour=blue")
    assert d == Directives(mode="cheap", ignored=("token 'hello' has no '='", "unknown key 'colour'"))


def test_value_split_on_first_equals_only() -> None:
    d = parse("@@tokenhub mode=cheap=yes")
    assert d is not None
    assert d.mode is None
    assert "cheap=yes" in d.ignored[0]


def test_keys_are_case_sensitive() -> None:
    d = parse("@@tokenhub MODE=cheap")
    assert d == Directives(ignored=("unknown key 'MODE'",))


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_allowed_mode_accepted(mode: str) -> None:
    assert parse(f"@@tokenhub mode={mode}") == Directives(mode=mode)


@pytest.mark.parametrize("mode", ["turbo", "", "Cheap", "CHEAP"])
def test_mode_outside_whitelist_ignored(mode: str) -> None:
    d = parse(f"@@tokenhub mode={mode}")
    assert d is not None
    assert d.mode is None
    assert len(d.ignored) == 1


def test_mode_whitelist_comes_from_caller() -> None:
    assert parse_directives([user("@@tokenhub mode=cheap")], {"normal"}) == Directives(
        ignored=("mode 'cheap' is not an allowed mode",)
    )


def test_later_valid_value_overrides_earlier_and_invalid_does_not_clear() -> None:
    assert parse("@@tokenhub mode=cheap mode=vote") == Directives(mode="vote")
    d = parse("@@tokenhub mode=cheap mode=turbo")
    assert d is not None and d.mode == "cheap"


@pytest.mark.parametrize(("raw", "expected"), [("0.01", 0.01), ("100", 100.0), ("1e-3", 0.001), (".5", 0.5)])
def test_budget_accepted(raw: str, expected: float) -> None:
    assert parse(f"@@tokenhub budget={raw}") == Directives(max_budget_usd=expected)


@pytest.mark.parametrize(
    "raw",
    ["0", "0.0", "-1", "-0.01", "100.0001", "1e400", "1e-400", "nan", "inf", "abc", "", "1_0", "0x1p-2"],
)
def test_budget_rejected(raw: str) -> None:
    d = parse(f"@@tokenhub budget={raw}")
    assert d is not None
    assert d.max_budget_usd is None
    assert len(d.ignored) == 1 and d.ignored[0].startswith("budget ")


@pytest.mark.parametrize(("raw", "expected"), [("1", 1), ("300000", 300000), ("+5000", 5000), ("007", 7)])
def test_latency_accepted(raw: str, expected: int) -> None:
    assert parse(f"@@tokenhub latency={raw}") == Directives(max_latency_ms=expected)


@pytest.mark.parametrize("raw", ["0", "-1", "-5000", "300001", "1.5", "5s", "", "1_000", "\uff15"])
def test_latency_rejected(raw: str) -> None:
    d = parse(f"@@tokenhub latency={raw}")
    assert d is not None
    assert d.max_latency_ms is None
    assert len(d.ignored) == 1 and d.ignored[0].startswith("latency ")


@pytest.mark.parametrize(("raw", "expected"), [("0", 0), ("8", 8), ("1000", 1000)])
def test_min_weight_accepted(raw: str, expected: int) -> None:
    # min_weight=0 is accepted here; the policy merge decides that zero cannot clear a body value.
    d = parse(f"@@tokenhub min_weight={raw}")
    assert d == Directives(min_weight=expected)
    assert d is not None and d.as_dict() == {"min_weight": expected}


@pytest.mark.parametrize("raw", ["-1", "1001", "2.5", "high", ""])
def test_min_weight_rejected(raw: str) -> None:
    d = parse(f"@@tokenhub min_weight={raw}")
    assert d is not None
    assert d.min_weight is None
    assert len(d.ignored) == 1 and d.ignored[0].startswith("min_weight ")


def test_long_values_are_clipped_in_notes() -> None:
    d = parse("@@tokenhub mode=" + "z" * 500)
    assert d is not None
    assert len(d.ignored[0]) < 120


# --- parsing: output_schema ---------------------------------------------------------------------------------


def test_output_schema_single_line() -> None:
    d = parse('@@tokenhub output_schema={"type":"object","required":["a"]}\nQ')
    assert d == Directives(output_schema={"type": "object", "required": ["a"]})


def test_output_schema_block_may_contain_spaces() -> None:
    schema = '{"type": "object", "properties": {"a": {"type": "string"}}}'
    content = f"@@tokenhub\nmode=cheap\noutput_schema={schema}\n@@end\nQ"
    d = parse(content)
    assert d == Directives(mode="cheap", output_schema={"type": "object", "properties": {"a": {"type": "string"}}})


def test_output_schema_any_json_value_is_accepted_here() -> None:
    # Whether it is a usable schema (object with "type") is checked later, by schema validation.
    assert parse("@@tokenhub output_schema=[1,2]") == Directives(output_schema=[1, 2])
    assert parse('@@tokenhub output_schema="x"') == Directives(output_schema="x")


def test_output_schema_null_is_noted_and_unset() -> None:
    d = parse("@@tokenhub output_schema=null mode=cheap")
    assert d is not None
    assert d.output_schema is None and d.mode == "cheap"
    assert len(d.ignored) == 1


@pytest.mark.parametrize(
    "content",
    [
        '@@tokenhub output_schema={"type": "object"}',  # single-line form splits on the space
        "@@tokenhub output_schema={type:object}",
        "@@tokenhub output_schema=",
        "@@tokenhub output_schema=NaN",
        "@@tokenhub\noutput_schema={oops\n@@end",
        "@@tokenhub output_schema=" + "[" * 1010 + "]" * 1010,  # well-formed but nested past recursion limit
    ],
)
def test_invalid_output_schema_raises(content: str) -> None:
    with pytest.raises(DirectiveError, match="invalid output_schema directive JSON"):
        parse(content)


def test_directive_error_is_a_value_error() -> None:
    assert issubclass(DirectiveError, ValueError)


def test_invalid_output_schema_in_skipped_block_does_not_raise() -> None:
    # An unterminated block is never parsed, so its bad JSON is irrelevant.
    assert parse("@@tokenhub\noutput_schema={oops\n", "@@tokenhub mode=cheap") == Directives(mode="cheap")


# --- parsing: the 2048-byte window --------------------------------------------------------------------------


def test_marker_beyond_window_not_parsed() -> None:
    assert parse("x" * SCAN_WINDOW_BYTES + "@@tokenhub mode=cheap") is None


def test_marker_straddling_window_end_not_parsed() -> None:
    assert parse("x" * (SCAN_WINDOW_BYTES - 5) + "@@tokenhub mode=cheap") is None


def test_window_counts_bytes_not_characters() -> None:
    # 1 + 2*1013 bytes of prefix puts the end of "mode=cheap" exactly at byte 2048; far fewer characters.
    line = "@@tokenhub mode=cheap"
    prefix = "a" + "\u00e9" * ((SCAN_WINDOW_BYTES - len(line) - 1) // 2)
    assert len(prefix.encode()) + len(line) == SCAN_WINDOW_BYTES
    assert parse(prefix + line + " budget=5") == Directives(mode="cheap")
    # One more 2-byte character pushes "ap" out of the window.
    assert parse(prefix + "\u00e9" + line) == Directives(ignored=("mode 'che' is not an allowed mode",))


@pytest.mark.parametrize("wide", ["\u00e9", "\u20ac", "\U0001f600"])
def test_multibyte_character_straddling_the_boundary_does_not_crash(wide: str) -> None:
    for pad in range(SCAN_WINDOW_BYTES - 4, SCAN_WINDOW_BYTES + 1):
        assert parse("a" * pad + wide + "@@tokenhub mode=cheap") is None


def test_multibyte_text_before_marker_inside_window() -> None:
    assert parse("\U0001f600" * 100 + " @@tokenhub mode=cheap") == Directives(mode="cheap")


def test_lone_surrogates_do_not_crash() -> None:
    assert parse("\ud800 @@tokenhub mode=cheap") == Directives(mode="cheap")
    assert parse("\ud800" * 1000 + "@@tokenhub mode=cheap") is None


def test_window_is_per_message() -> None:
    assert parse("x" * 5000, "@@tokenhub mode=cheap") == Directives(mode="cheap")


# --- Directives.as_dict -------------------------------------------------------------------------------------


def test_as_dict_only_set_keys() -> None:
    assert Directives().as_dict() == {}
    assert Directives(mode="cheap", max_latency_ms=5).as_dict() == {"mode": "cheap", "max_latency_ms": 5}
    full = Directives(
        mode="vote",
        max_budget_usd=1.5,
        max_latency_ms=10,
        min_weight=0,
        output_schema={"type": "string"},
        ignored=("unknown key 'x'",),
    )
    assert full.as_dict() == {
        "mode": "vote",
        "max_budget_usd": 1.5,
        "max_latency_ms": 10,
        "min_weight": 0,
        "output_schema": {"type": "string"},
        "ignored": ["unknown key 'x'"],
    }


def test_directives_are_frozen() -> None:
    d = Directives(mode="cheap")
    with pytest.raises(AttributeError):
        d.mode = "vote"  # type: ignore[misc]


# --- stripping ----------------------------------------------------------------------------------------------


def test_strip_single_line_removes_line_and_its_newline() -> None:
    assert strip_one("@@tokenhub mode=cheap\nHello\nWorld") == "Hello\nWorld"


def test_strip_single_line_without_newline() -> None:
    assert strip_one("@@tokenhub mode=cheap") == ""
    assert strip_one("  Please help  @@tokenhub latency=5000  ") == "Please help"


def test_strip_last_line_trims_the_whole_remaining_text() -> None:
    # "keep only the trimmed text before the marker": the trim covers leading whitespace too.
    assert strip_one("\n  Intro\n\n@@tokenhub mode=cheap") == "Intro"


def test_strip_mid_text_keeps_text_before_marker_on_same_line() -> None:
    # Literal rule: from the marker through its newline goes, so the next line joins the kept prefix.
    assert strip_one("A\nPlease @@tokenhub mode=cheap\nB") == "A\nPlease B"


def test_strip_block() -> None:
    assert strip_one("Intro\n@@tokenhub\nmode=cheap\n@@end\nQuestion") == "Intro\nQuestion"


def test_strip_block_at_end_without_trailing_newline() -> None:
    assert strip_one("Question\n@@tokenhub\nmode=cheap\n@@end") == "Question\n"


def test_strip_block_removes_only_one_following_newline() -> None:
    assert strip_one("@@tokenhub\nmode=cheap\n@@end\n\nQuestion") == "\nQuestion"


def test_strip_block_keeps_text_after_end_marker_on_same_line() -> None:
    assert strip_one("@@tokenhub\nmode=cheap\n@@end trailing\nQ") == " trailing\nQ"


def test_strip_block_keeps_text_before_marker() -> None:
    assert strip_one("Hi @@tokenhub\nmode=cheap\n@@end\nQ") == "Hi Q"


def test_strip_block_without_end_removes_only_marker_line() -> None:
    assert strip_one("@@tokenhub\nmode=cheap\nQuestion") == "mode=cheap\nQuestion"


def test_strip_bare_marker_at_end() -> None:
    assert strip_one("Hello @@tokenhub") == "Hello"


def test_strip_ignores_window_limit() -> None:
    content = "x" * 5000 + "\n@@tokenhub mode=cheap\ntail"
    assert strip_one(content) == "x" * 5000 + "\ntail"


def test_strip_first_occurrence_only() -> None:
    assert strip_one("@@tokenhub mode=cheap\nQ\n@@tokenhub mode=vote") == "Q\n@@tokenhub mode=vote"


@pytest.mark.parametrize("role", ["system", "assistant", "tool", "user"])
def test_strip_applies_to_any_role(role: str) -> None:
    assert strip_one("@@tokenhub mode=cheap\nbody", role=role) == "body"


def test_strip_mixed_messages_and_others_untouched() -> None:
    plain = Message(role="user", content="no directive here")
    tool = Message(role="tool", content="result", tool_call_id="call_1", name="lookup")
    msgs = [
        Message(role="system", content="Be brief.\n@@tokenhub\nmode=vote\n@@end\n"),
        plain,
        Message(role="user", content="@@tokenhub mode=cheap\nQuestion"),
        Message(role="assistant", content="Answer @@tokenhub x=1", tool_calls=[{"id": "c1"}]),
        tool,
    ]
    out = strip_directives(msgs)
    assert [m.content for m in out] == ["Be brief.\n", "no directive here", "Question", "Answer", "result"]
    assert out[1] is plain and out[4] is tool
    # Only content changes; the other fields ride along.
    assert out[3].role == "assistant" and out[3].tool_calls == [{"id": "c1"}]


def test_strip_does_not_mutate_inputs() -> None:
    msgs = [user("@@tokenhub mode=cheap\nQ"), Message(role="system", content="@@tokenhub\na=1\n@@end\nS")]
    before = copy.deepcopy(msgs)
    out = strip_directives(msgs)
    assert msgs == before
    assert out is not msgs
    assert all(o is not m for o, m in zip(out, msgs, strict=True))
    assert [m.content for m in out] == ["Q", "S"]


def test_strip_accepts_any_sequence_and_returns_list() -> None:
    out = strip_directives((user("a"), user("@@tokenhub mode=cheap")))
    assert isinstance(out, list)
    assert [m.content for m in out] == ["a", ""]
    assert strip_directives([]) == []


def test_parse_then_strip_round_trip() -> None:
    msgs = [
        Message(role="system", content="sys"),
        user("@@tokenhub\nmode=thompson\nbudget=0.2\n@@end\nWhat is 2+2?"),
    ]
    assert parse_directives(msgs, MODES) == Directives(mode="thompson", max_budget_usd=0.2)
    assert [m.content for m in strip_directives(msgs)] == ["sys", "What is 2+2?"]

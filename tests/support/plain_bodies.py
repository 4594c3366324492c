"""The codecs' differential tests: a plain path beside its models' path, and hypothesis strategies for bodies a
plain path takes and the odd values (another type, a value out of range, a field it leaves to the models) it
must decline or decode alike."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from hypothesis import strategies as st

from pipeline.context import Policy
from pipeline.errors import TokenHubError
from pipeline.types import ChatRequest


@dataclass(frozen=True)
class PlainPath:
    """A codec's plain path (the usual body decoded by hand) and its models' path, over the same bytes."""

    plain: Callable[[bytes, int], tuple[ChatRequest, Policy] | None]
    validated: Callable[[bytes, int], tuple[ChatRequest, Policy]]
    max_messages: int

    def both(self, raw: bytes) -> tuple[Any, Any]:
        """(the plain path's (request, policy) or None, the models' (request, policy) or their error type)."""
        try:
            by_models: Any = self.validated(raw, self.max_messages)
        except TokenHubError as exc:
            by_models = type(exc)
        return self.plain(raw, self.max_messages), by_models

    def agrees(self, body: Any) -> None:
        """The plain path declines the body or decodes it exactly as the models do."""
        by_plain, by_models = self.both(json.dumps(body).encode())
        assert by_plain is None or by_plain == by_models

    def takes(self, body: Any) -> None:
        """The plain path decodes the body (sent as UTF-8, as the SDKs send it) exactly as the models do."""
        by_plain, by_models = self.both(orjson.dumps(body))
        assert by_plain is not None and by_plain == by_models


def without_policy(
    plain: Callable[[bytes, int], ChatRequest | None],
) -> Callable[[bytes, int], tuple[ChatRequest, Policy] | None]:
    """A plain path for bodies that carry no policy, returning what the models' path returns: (request, Policy())."""

    def decode(raw: bytes, max_messages: int) -> tuple[ChatRequest, Policy] | None:
        request = plain(raw, max_messages)
        return None if request is None else (request, Policy())

    return decode


TEXT = st.text(max_size=8)
NUMBER = st.one_of(st.none(), st.integers(-2, 2**40), st.booleans(), st.floats(-2, 1e6), TEXT)
GOOD_MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]), "content": TEXT})


def one_of(choices: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """{name: value} for one of the names, each as likely (hypothesis' one_of favours its first branches)."""
    return st.sampled_from(sorted(choices)).flatmap(lambda name: choices[name].map(lambda value: {name: value}))


def with_odd_fields(
    base: st.SearchStrategy[dict[str, Any]], odd: st.SearchStrategy[dict[str, Any]], most: int = 2
) -> st.SearchStrategy[dict[str, Any]]:
    """`base` with up to `most` of the `odd` fields set over it."""
    return st.builds(
        lambda body, odds: {k: v for d in (body, *odds) for k, v in d.items()}, base, st.lists(odd, max_size=most)
    )


# A plain message with one field set to something else.
ODD_MESSAGE = st.builds(
    lambda message, odd: {**message, **odd},
    GOOD_MESSAGE,
    one_of(
        {
            "role": st.sampled_from(["", "r" * 64, "r" * 65, 7, None]),
            "content": st.sampled_from([None, 7, [{"type": "text", "text": "a"}], [{"type": "image_url"}]]),
            "name": TEXT,
            "tool_call_id": TEXT,
            "tool_calls": st.lists(st.integers(), max_size=1),
            "unknown": TEXT,
        }
    ),
)


def good_messages(max_messages: int) -> st.SearchStrategy[list[dict[str, Any]]]:
    return st.lists(GOOD_MESSAGE, min_size=1, max_size=max_messages)


def odd_messages(max_messages: int) -> st.SearchStrategy[Any]:
    """A messages value a plain path must look at twice: an odd message among good ones, too many, none,
    ones that are not messages, or no list at all."""
    return st.sampled_from(
        [
            st.builds(lambda good, odd: [*good, odd], st.lists(GOOD_MESSAGE, max_size=max_messages - 1), ODD_MESSAGE),
            st.lists(GOOD_MESSAGE, min_size=max_messages + 1, max_size=max_messages + 1),
            st.sampled_from([[], [{"content": "no role"}], [7]]),
            NUMBER,
        ]
    ).flatmap(lambda messages: messages)

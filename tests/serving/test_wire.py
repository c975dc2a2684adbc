"""The wire format and the web side import no torch; visible text never shows part of a stop string."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from alignloop.serving.jobs import visible_end
from alignloop.serving.wire import ChatCompletionRequest, Delta


def test_the_web_side_imports_no_torch():
    code = ("import sys, alignloop.serving.app, alignloop.serving.wire, alignloop.serving.jobs; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("text, stops, expected", [
    ("Hello wor", ["world"], (6, False)),  # "wor" may become "world": held back
    ("Hello world!", ["world"], (6, True)),
    ("Hello w", ["world", "wx"], (6, False)),
    ("Hello", ["lo", "Hel"], (0, True)),  # the first occurrence of any stop string
    ("abc", [], (3, False)),
    ("ab\ufffd", [], (2, False)),  # a character's bytes still coming
    ("a\ufffd\ufffd", ["zz"], (1, False)),
    ("ababa", ["abac"], (2, False)),  # the longest end that starts a stop string: "aba"
])
def test_visible_end(text, stops, expected):
    assert visible_end(text, stops) == expected


def test_request_fields():
    r = ChatCompletionRequest.model_validate({"model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        "stop": "x", "max_completion_tokens": 7, "user": "ignored"})
    assert r.chat() == [{"role": "user", "content": "ab"}] and r.stop_list() == ["x"] and r.token_limit() == 7
    assert r.temperature == 1.0 and r.n == 1 and not r.stream
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"model": "m", "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "a"}], "stop": ""})


def test_a_delta_leaves_out_what_it_does_not_change():
    assert Delta(role="assistant", content="").model_dump() == {"role": "assistant", "content": ""}
    assert Delta(content="x").model_dump() == {"content": "x"} and Delta().model_dump() == {}

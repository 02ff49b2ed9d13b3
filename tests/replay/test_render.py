"""The Markdown report shows rule names, gates and paths as written: code spans are read
back with a CommonMark parser (markdown-it), not compared with our own escaping."""

from __future__ import annotations

import html
import re

from hypothesis import given
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from callward.replay.render import _code

_CODE = re.compile(r"<code>(.*?)</code>", re.S)


def _shown(markdown: str) -> list[str]:
    parser = MarkdownIt("commonmark").enable("table")
    return [html.unescape(m) for m in _CODE.findall(parser.render(markdown))]


def test_a_gate_reads_as_typed() -> None:
    assert _shown(f"- gate {_code('newly_denied>1%')} (value 3)") == ["newly_denied>1%"]
    assert _shown(f"- gate {_code('deny->allow>0')}") == ["deny->allow>0"]


_TEXT = st.text(
    alphabet=st.sampled_from(list("ab <>&|`\\*_-%'\"")) | st.characters(codec="utf-8"),
    min_size=1,
    max_size=30,
    # CommonMark shows NUL as U+FFFD and ends lines at CR or LF: both are out of scope here.
).filter(lambda s: s.strip() != "" and not {"\r", "\n", "\x00"} & set(s))


@given(_TEXT)
def test_any_text_in_a_code_span_reads_back_unchanged(text: str) -> None:
    assert _shown(f"- gate {_code(text)} (value 1)") == [text]


@given(_TEXT)
def test_any_text_in_a_table_cell_code_span_reads_back_unchanged(text: str) -> None:
    table = f"| from | to |\n|---|---|\n| {_code(text, cell=True)} | x |\n"
    assert _shown(table) == [text]

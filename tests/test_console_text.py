"""User data on a console or in a log line: control characters escaped, long values cut short."""

from __future__ import annotations

from negforge.schemas.console_text import printable, printable_lines, quoted, shortened


def test_control_characters_are_escaped_and_other_text_is_left_alone():
    assert printable("a\x1b[31mred\x00\x07\x7f\x9b\ud800\u202eb") == "a\\x1b[31mred\\x00\\x07\\x7f\\x9b\\ud800\\u202eb"
    assert printable("café 東京 ∑ tab\there") == "café 東京 ∑ tab\\there"
    assert printable_lines("first\x1b\nsecond\r") == "first\\x1b\nsecond\\r"


def test_long_values_are_cut_with_the_length_they_had():
    assert quoted("short") == "'short'"
    assert quoted("a" * 1000) == "'" + "a" * 79 + "...(1002 characters)"
    assert shortened("b" * 81, 80) == "b" * 80 + "...(81 characters)"
    assert quoted([1] * 100).endswith("...(300 characters)")

"""Node's ``util.inspect``, for the values Etsy statsd's console prints.

Etsy statsd answers ``counters``, ``gauges`` and ``timers`` with ``util.inspect(object)``, and
scripts written against it parse that text. This renders the shapes those commands hold — an
object of numbers, of arrays of numbers, of arrays of strings — as Node 20 does with the
default options (``breakLength`` 80, ``compact`` 3, ``maxArrayLength`` 100), including its
grouping of long arrays into columns. A test compares it with ``node`` itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

__all__ = ["inspect", "js_number"]

BREAK_LENGTH = 80
COMPACT = 3
MAX_ARRAY_LENGTH = 100
_IDENTIFIER = re.compile(r"^[a-zA-Z_][a-zA-Z_0-9]*$")
_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\x0b": "\\x0B", "\f": "\\f", "\r": "\\r",
            "\\": "\\\\"}

Value = float | str | Sequence[float] | Sequence[str]


def js_number(value: float) -> str:
    """``String(value)`` in JavaScript (what ``util.inspect`` prints for a number)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign = "-" if value < 0 else ""
    text = repr(abs(float(value)))  # the shortest digits that round-trip, as JavaScript's
    mantissa, _, exponent = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + int(exponent or 0)  # value = 0.<digits> * 10**point
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0") or "0"
    count = len(digits)
    if count <= point <= 21:
        return sign + digits + "0" * (point - count)
    if 0 < point <= 21:
        return sign + digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return sign + "0." + "0" * -point + digits
    shown = point - 1
    tail = ("." + digits[1:]) if count > 1 else ""
    return f"{sign}{digits[0]}{tail}e{'+' if shown >= 0 else '-'}{abs(shown)}"


def _quote(text: str) -> str:
    quote = "'"
    if "'" in text:
        if '"' not in text:
            quote = '"'
        elif "`" not in text and "${" not in text:
            quote = "`"
    out = []
    for char in text:
        if char == quote or char in _ESCAPES or ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F:
            if char == quote:
                out.append("\\" + char)
            else:
                out.append(_ESCAPES.get(char) or f"\\x{ord(char):02X}")
        else:
            out.append(char)
    return quote + "".join(out) + quote


def _scalar(value: float | str) -> str:
    return _quote(value) if isinstance(value, str) else js_number(value)


def _below_break_length(output: list[str], start: int) -> bool:
    total = len(output) + start
    if total + len(output) > BREAK_LENGTH:
        return False
    for entry in output:
        total += len(entry)
        if total > BREAK_LENGTH:
            return False
    return True


def _reduce(output: list[str], braces: tuple[str, str], indentation: int, entries: int,
            depth_gap: int) -> str:
    if depth_gap < COMPACT and entries == len(output):
        start = len(output) + indentation + len(braces[0]) + 10
        if _below_break_length(output, start):
            joined = ", ".join(output)
            if "\n" not in joined:
                return f"{braces[0]} {joined} {braces[1]}"
    newline = "\n" + " " * indentation
    return f"{braces[0]}{newline}  {(',' + newline + '  ').join(output)}{newline}{braces[1]}"


def _group(output: list[str], numbers: bool, indentation: int) -> list[str]:
    """Node's ``groupArrayElements``: more than six short entries go in aligned columns."""
    length = len(output)
    if MAX_ARRAY_LENGTH < length:  # never: the "... more items" entry is added after this
        length -= 1
    separator = 2
    lengths = [len(entry) for entry in output[:length]]
    total = sum(lengths) + separator * length
    longest = max(lengths)
    actual_max = longest + separator
    if actual_max * 3 + indentation < BREAK_LENGTH and (total / actual_max > 5 or longest <= 6):
        average_bias = math.sqrt(actual_max - total / len(output))
        biased_max = max(actual_max - 3 - average_bias, 1)
        columns = min(_js_round(math.sqrt(2.5 * biased_max * len(output)) / biased_max),
                      (BREAK_LENGTH - indentation) // actual_max, COMPACT * 4, 15)
        if columns <= 1:
            return output
        widths = [max(lengths[j] for j in range(i, length, columns)) + separator
                  for i in range(columns)]
        rows = []
        for i in range(0, length, columns):
            end = min(i + columns, length)
            row = ""
            for j in range(i, end - 1):
                cell = output[j] + ", "
                row += cell.rjust(widths[j - i]) if numbers else cell.ljust(widths[j - i])
            last = output[end - 1]
            row += last.rjust(widths[end - 1 - i] - separator) if numbers else last
            rows.append(row)
        if MAX_ARRAY_LENGTH < len(output):
            rows.append(output[length])
        return rows
    return output


def _js_round(value: float) -> int:
    return math.floor(value + 0.5)  # Math.round: halves go up


def _array(values: Sequence[float] | Sequence[str], indentation: int) -> str:
    if not values:
        return "[]"
    output = [_scalar(value) for value in values[:MAX_ARRAY_LENGTH]]
    if len(values) > MAX_ARRAY_LENGTH:
        remaining = len(values) - MAX_ARRAY_LENGTH
        output.append(f"... {remaining} more item{'s' if remaining > 1 else ''}")
    entries = len(output)
    if entries > 6:
        output = _group(output, all(not isinstance(v, str) for v in values), indentation)
    return _reduce(output, ("[", "]"), indentation, entries, 0)


def inspect(obj: Mapping[str, Value]) -> str:
    """``util.inspect(obj)`` for an object whose values are numbers, strings or arrays."""
    if not obj:
        return "{}"
    output = []
    nested = False
    for key, value in obj.items():
        name = key if _IDENTIFIER.match(key) else _quote(key)
        if isinstance(value, str | int | float):
            shown = _scalar(value)
        else:
            shown = _array(value, 2)
            nested = nested or bool(value)  # Node returns "[]" before noting the depth
        output.append(f"{name}: {shown}")
    # Node compares the depth of the last nested value formatted with this object's depth.
    return _reduce(output, ("{", "}"), 0, len(output), 1 if nested else 0)

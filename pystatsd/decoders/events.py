"""One DogStatsD event or service check line -> an :class:`~pystatsd.snapshot.Event`.

``_e{<title bytes>,<text bytes>}:<title>|<text>[|d:<ts>][|h:<host>][|p:<priority>]
[|t:<alert type>][|s:<source type>][|k:<aggregation key>][|#<tags>]`` and
``_sc|<name>|<status>[|d:<ts>][|h:<host>][|#<tags>][|m:<message>]``, as Datadog's datagram
format documents them; the rules are in docs/input-formats.md."""

from __future__ import annotations

from pystatsd.decoders.errors import DecodeError
from pystatsd.decoders.limits import check_timestamp, parse_number
from pystatsd.sample import Tags
from pystatsd.snapshot import EVENT, SERVICE_CHECK, Event

PRIORITIES = frozenset({"normal", "low"})
ALERT_TYPES = frozenset({"info", "warning", "error", "success"})
STATUSES = {"0": 0, "1": 1, "2": 2, "3": 3}


def is_event_line(line: bytes) -> bool:
    """True for a line that is an event or a service check rather than a metric."""
    return line.startswith(b"_e{") or line.startswith(b"_sc|")


def parse_event_line(line: bytes) -> Event:
    """Given one stripped event or service check line, return it, or raise
    :class:`DecodeError` (``bad_event``) naming what is wrong."""
    if line.startswith(b"_e{"):
        return _event(line)
    return _service_check(line)


def _event(line: bytes) -> Event:
    close = line.find(b"}:")
    lengths = line[3:close].split(b",") if close > 0 else []
    if len(lengths) != 2 or not all(n.isdigit() for n in lengths):
        raise DecodeError("bad_event", "event without its {title length,text length}:")
    title_bytes, text_bytes = int(lengths[0]), int(lengths[1])
    # The lengths count UTF-8 bytes, so a title or text may hold '|'.
    start = close + 2
    title_end = start + title_bytes
    text_start = title_end + 1
    text_end = text_start + text_bytes
    if title_bytes == 0 or text_end > len(line) or line[title_end:text_start] != b"|":
        raise DecodeError("bad_event", f"event lengths {title_bytes},{text_bytes} do not fit "
                          "its title and text")
    title = _text(line[start:title_end])
    text = _text(line[text_start:text_end]).replace("\\n", "\n")
    # What follows the text is split at '|' as the Datadog agent does, without asking that it
    # start with one (its documentation's own example has a text length one too long).
    fields = _text(line[text_end:]).split("|") if text_end < len(line) else []
    known: dict[str, str] = {}
    tags: Tags = ()
    for field in fields:
        if field.startswith("#"):
            tags = _tags(field[1:])
        elif len(field) > 1 and field[1] == ":" and field[0] in "dhpkst":
            known[field[0]] = field[2:]
        # any other field a newer client adds is ignored, as in metric lines
    priority = known.get("p", "")
    if priority and priority not in PRIORITIES:
        raise DecodeError("bad_event", f"event priority {priority[:20]!r} (normal or low)")
    alert_type = known.get("t", "")
    if alert_type and alert_type not in ALERT_TYPES:
        raise DecodeError("bad_event", f"event alert type {alert_type[:20]!r}")
    return Event(EVENT, title, text, tags, _timestamp(known.get("d")), known.get("h", ""),
                 priority, alert_type, known.get("k", ""), known.get("s", ""))


def _service_check(line: bytes) -> Event:
    text = _text(line)
    fields = text.split("|")
    if len(fields) < 3 or not fields[1]:
        raise DecodeError("bad_event", "service check without its name and status")
    status = STATUSES.get(fields[2])
    if status is None:
        raise DecodeError("bad_event", f"service check status {fields[2][:20]!r} (0 to 3)")
    known: dict[str, str] = {}
    tags: Tags = ()
    message = ""
    for index, field in enumerate(fields[3:], start=3):
        if field.startswith("m:"):
            # The message comes last and is the rest of the line, '|' included.
            message = "|".join([field[2:], *fields[index + 1:]]).replace("\\n", "\n")
            break
        if field.startswith("#"):
            tags = _tags(field[1:])
        elif field.startswith(("d:", "h:")):
            known[field[0]] = field[2:]
    return Event(SERVICE_CHECK, fields[1], message, tags, _timestamp(known.get("d")),
                 known.get("h", ""), status=status)


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("not_utf8", f"byte {exc.start} is not UTF-8") from None


def _timestamp(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return check_timestamp(parse_number(text, "timestamp"))
    except DecodeError as exc:
        raise DecodeError("bad_event", exc.detail) from None


def _tags(text: str) -> Tags:
    tags: dict[str, str] = {}
    for item in text.split(","):
        key, _, value = item.partition(":")
        if key:
            tags[key] = value
    return tuple(sorted(tags.items()))

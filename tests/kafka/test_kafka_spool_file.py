"""The disk spool keeps messages in order across appends, pushes to the front, partial sends
and restarts, and drops (and reports) only what does not fit."""

from __future__ import annotations

from pathlib import Path

from forwarders.spool import Record, Spool


def records(prefix: str, count: int) -> list[Record]:
    return [Record("t", f"{prefix}{i}".encode(), f"value-{prefix}{i}".encode())
            for i in range(count)]


def take(spool: Spool, count: int | None = None) -> list[bytes]:
    taken = []
    while count is None or len(taken) < count:
        record = spool.peek()
        if record is None:
            break
        taken.append(record.key or b"")
        spool.pop()
    return taken


def test_order_survives_partial_sends_front_pushes_and_restarts(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=200)
    assert spool.append(records("a", 10)) == 0
    assert take(spool, 3) == [b"a0", b"a1", b"a2"]
    spool.append(records("b", 3))
    spool.push_front(records("f", 2))  # e.g. messages whose delivery timed out
    spool.close()

    again = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=200)
    assert take(again) == [b"f0", b"f1", *[f"a{i}".encode() for i in range(3, 10)],
                           b"b0", b"b1", b"b2"]
    assert not again and again.bytes == 0
    again.close()
    assert list(tmp_path.glob("*.seg")) == []


def test_a_key_less_record_round_trips(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append([Record("topic.x", None, b"")])
    spool.close()
    assert Spool(tmp_path, max_bytes=1 << 20).peek() == Record("topic.x", None, b"")


def test_a_full_spool_drops_the_new_records_and_keeps_the_old(tmp_path: Path) -> None:
    size = records("a", 1)[0].size()
    spool = Spool(tmp_path, max_bytes=size * 5)
    assert spool.append(records("a", 4)) == 0
    assert spool.append(records("b", 3)) == 2
    assert spool.push_front(records("f", 2)) == 2
    assert take(spool) == [b"a0", b"a1", b"a2", b"a3", b"b0"]
    spool.close()


def test_a_truncated_segment_keeps_its_whole_records(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(records("a", 3))
    spool.close()
    segment = next(tmp_path.glob("*.seg"))
    segment.write_bytes(segment.read_bytes()[:-4])  # a crash in the middle of a write
    assert take(Spool(tmp_path, max_bytes=1 << 20)) == [b"a0", b"a1"]


def replace_with_a_file(directory: Path) -> Path:
    """Make the directory unusable the way an operator's mistake does, whoever the test runs as
    (root ignores a chmod): move it away and put a file where it was. Returns where it went."""
    moved = directory.with_name(directory.name + ".moved")
    directory.rename(moved)
    directory.write_text("not a directory")
    return moved


def put_back(directory: Path, moved: Path) -> None:
    directory.unlink()
    moved.rename(directory)


def test_a_sent_segment_that_cannot_be_removed_is_never_sent_again(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory, max_bytes=1 << 20, segment_bytes=50)
    spool.append(records("a", 3))
    spool.append(records("c", 3))  # a second segment
    assert take(spool, 2) == [b"a0", b"a1"]
    spool.commit()
    moved = replace_with_a_file(directory)
    # the first segment is used up but cannot be unlinked; the second cannot even be opened,
    # so it is left for a start that can (not lost, not sent)
    assert take(spool) == [b"a2"]
    assert spool.io_errors == 2 and spool.io_lost == 0 and not spool
    assert spool.append(records("b", 2)) == 2  # no segment can be created: lost, and counted
    assert spool.io_lost == 2
    spool.close()
    put_back(directory, moved)

    again = Spool(directory, max_bytes=1 << 20)
    assert again.records == 3
    assert take(again) == [b"c0", b"c1", b"c2"]  # a0..a2 were handed on: never again
    again.close()
    assert list(directory.glob("*.seg")) == []


def test_a_partly_sent_segment_keeps_its_mark_when_the_directory_is_gone(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory, max_bytes=1 << 20)
    spool.append(records("a", 5))
    assert take(spool, 3) == [b"a0", b"a1", b"a2"]
    moved = replace_with_a_file(directory)
    assert spool.push_front(records("f", 2)) == 2  # cannot write a new segment: counted
    assert spool.io_lost == 2
    spool.close()  # the mark goes through the open segment, no directory needed
    put_back(directory, moved)
    assert take(Spool(directory, max_bytes=1 << 20)) == [b"a3", b"a4"]


def test_ids_survive_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append([Record("t", b"k", b"v", b"0123abcd" * 4)])
    spool.close()
    assert Spool(tmp_path, max_bytes=1 << 20).peek() == Record("t", b"k", b"v", b"0123abcd" * 4)

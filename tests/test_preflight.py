"""--check-config checks the paths start-up will write, as the user the service runs as."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest

from pystatsd.config import build_config
from pystatsd.preflight import check_paths, check_paths_as, needed_paths


def config_for(tmp: Path) -> dict:
    return build_config({
        "state_dir": str(tmp / "state"),
        "logging": {"target": str(tmp / "logs" / "pystatsd.log")},
        "forwarders": {"out": {"type": "file", "path": str(tmp / "out" / "m.jsonl")},
                       "k": {"type": "kafka", "kafka_topic": "t", "kafka_broker": "x:1"}},
    })


def test_every_written_path_is_named_by_its_key(tmp_path: Path) -> None:
    needed = needed_paths(config_for(tmp_path))
    assert {key: (str(p.path), p.directory) for key, p in needed.items()} == {
        "logging.target": (str(tmp_path / "logs" / "pystatsd.log"), False),
        "forwarders.out.path": (str(tmp_path / "out" / "m.jsonl"), False),
        "forwarders.k.spool_dir": (str(tmp_path / "state" / "spool" / "k"), True),
    }
    assert check_paths(needed) == []


def test_a_directory_where_a_file_goes_and_a_file_where_a_directory_goes(tmp_path: Path) -> None:
    (tmp_path / "logs" / "pystatsd.log").mkdir(parents=True)
    (tmp_path / "state").write_text("")
    problems = check_paths(needed_paths(config_for(tmp_path)))
    assert problems == [
        f"logging.target: {tmp_path / 'logs' / 'pystatsd.log'} is a directory",
        f"forwarders.k.spool_dir: {tmp_path / 'state' / 'spool' / 'k'} cannot be created: "
        f"{tmp_path / 'state'} is not a directory",
    ]


@pytest.mark.skipif(os.geteuid() != 0, reason="checking as another user needs root")
def test_root_checks_as_the_service_user() -> None:
    """As root every path is writable; as nobody, a directory only root may write is not."""
    user = pwd.getpwnam("nobody").pw_name
    tmp_path = Path(tempfile.mkdtemp(prefix="preflight-", dir="/tmp"))  # reachable by nobody
    os.chmod(tmp_path, 0o755)
    needed = needed_paths(config_for(tmp_path))
    assert check_paths(needed) == []  # root
    problems = check_paths_as(user, needed)
    owner = f"(owner root, mode drwxr-xr-x) (as user {user})"
    assert problems == [
        f"logging.target: {tmp_path / 'logs' / 'pystatsd.log'} cannot be created: {tmp_path} "
        f"is not writable {owner}",
        f"forwarders.out.path: {tmp_path / 'out' / 'm.jsonl'} cannot be created: {tmp_path} is "
        f"not writable {owner}",
        f"forwarders.k.spool_dir: {tmp_path / 'state' / 'spool' / 'k'} cannot be created: "
        f"{tmp_path} is not writable {owner}",
    ]
    os.chmod(tmp_path, 0o777)
    try:
        assert check_paths_as(user, needed) == []
    finally:
        shutil.rmtree(tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="checking as another user needs root")
def test_a_path_behind_a_directory_the_user_may_not_search(tmp_path: Path) -> None:
    # pytest's own base directory is 0700 root: nobody cannot even look inside
    needed = needed_paths(config_for(tmp_path))
    problems = check_paths_as("nobody", needed)
    blocked = next(p for p in reversed(tmp_path.parents) if p.stat().st_mode & 0o001 == 0)
    assert problems[0] == (f"logging.target: {tmp_path / 'logs' / 'pystatsd.log'} cannot be "
                           f"reached: {blocked} is not searchable (as user nobody)")


def test_check_config_reports_an_unwritable_log_target_in_one_line(tmp_path: Path) -> None:
    """Found by probing: --check-config said ok, then a reload to this file killed the daemon."""
    import subprocess
    import sys

    from tests.conftest import REPO

    (tmp_path / "logs").write_text("a file where the log directory should be")
    config = tmp_path / "pystatsd.conf"
    config.write_text(f"logging:\n  target: {tmp_path / 'logs' / 'pystatsd.log'}\n")
    checked = subprocess.run([sys.executable, "-m", "pystatsd", "--check-config", str(config)],
                             capture_output=True, text=True, cwd=REPO, timeout=60)
    assert checked.returncode == 1
    assert checked.stderr.strip() == (
        f"{config}: logging.target: {tmp_path / 'logs' / 'pystatsd.log'} cannot be created: "
        f"{tmp_path / 'logs'} is not a directory")

"""The C load generators (bench/udp_blast.c, graphite_blast.c, loadgen.c, around the sender
they share, bench/paced_udp.h), compiled into build/ when missing or older than their sources."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED_SOURCES = (HERE / "paced_udp.h",)


def build_sender(binary: Path, needed_by: str) -> Path:
    """``binary`` (``build/<name>``) compiled from bench/<name>.c unless it is newer than that
    file and the shared sender; ``needed_by`` names the bench in the error without a compiler."""
    sources = (HERE / f"{binary.name}.c", *SHARED_SOURCES)
    if not binary.exists() or binary.stat().st_mtime < max(s.stat().st_mtime for s in sources):
        binary.parent.mkdir(exist_ok=True)
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            raise SystemExit(f"{needed_by} needs a C compiler for its load generator")
        subprocess.run([compiler, "-O2", "-o", str(binary), str(sources[0])], check=True)
    return binary

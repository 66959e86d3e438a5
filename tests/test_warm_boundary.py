"""The warm server's client hands a call only to this user's server: another user who renames
folders between the caller's check and its connect, or who plants a socket, receives nothing.

Each mode of swap_support.py runs 100 calls with an impostor of another uid (65534) listening
under our socket's name; the forked impostor needs root to become that user.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SUPPORT = Path(__file__).with_name("swap_support.py")

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0,
    reason="another user is made with os.setuid, which needs root on Linux",
)


def _run(mode: str) -> dict[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("B24_")}
    done = subprocess.run(
        [sys.executable, str(SUPPORT), mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout)


def test_folder_swapped_between_check_and_connect_reaches_no_impostor() -> None:
    report = _run("between")
    assert report["impostor"] == 0
    assert report["ours"] == report["calls"] == 100  # the checked folder, wherever it went


def test_folders_swapped_all_along_reach_no_impostor() -> None:
    report = _run("race")
    assert report["calls"] == 100 and report["impostor"] == 0


def test_a_socket_of_another_user_gets_nothing() -> None:
    report = _run("planted")
    assert report["calls"] == 100 and report["impostor"] == 0

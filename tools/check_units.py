"""Check the systemd units README.md prints with ``systemd-analyze verify``.

    python -m tools.check_units          # make units

Takes every ``ini`` block of README.md that starts with ``# /etc/systemd/system/NAME``, puts the
install path (``/opt/bitrix24-agent``) where this checkout is (so ``ExecStart`` names programs
that exist: ``make install`` made them), and runs ``systemd-analyze verify`` on each. Any line it
prints (unknown keys are only warnings to systemd) or a non-zero exit fails the check. Not part
of ``make test``: a clean CI machine may have no systemd; ``apt-get install systemd`` adds it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INSTALLED_AT = "/opt/bitrix24-agent"
UNIT = re.compile(r"```ini\n# /etc/systemd/system/(\S+\.service)\n(.*?)```", re.S)


def units(readme: str) -> dict[str, str]:
    """README's units by file name, pointed at this checkout."""
    return {name: body.replace(INSTALLED_AT, str(ROOT)) for name, body in UNIT.findall(readme)}


def main() -> int:
    verify = shutil.which("systemd-analyze")
    if verify is None:
        print("check_units: systemd-analyze not found (apt-get install systemd)", file=sys.stderr)
        return 1
    found = units((ROOT / "README.md").read_text(encoding="utf-8"))
    if not found:
        print("check_units: README.md prints no systemd unit", file=sys.stderr)
        return 1
    failed = 0
    with tempfile.TemporaryDirectory() as folder:
        for name, body in sorted(found.items()):
            path = Path(folder) / name
            path.write_text(body, encoding="utf-8")
            done = subprocess.run(
                [verify, "verify", str(path)], capture_output=True, text=True, timeout=60
            )
            said = (done.stdout + done.stderr).strip()
            ok = done.returncode == 0 and not said
            failed += not ok
            print(f"{name}: {'ok' if ok else 'FAILED'}" + (f"\n{said}" if said else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

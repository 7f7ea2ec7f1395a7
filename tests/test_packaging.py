"""The wheel (and so the image) holds the product: the operator and the simulator, with
their migrations; the test and dev tooling stays in the checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_ships_the_operator_and_the_simulator_only(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "__pycache__", "*.egg-info", "build"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(tmp_path), str(source)], check=True, timeout=300)
    [wheel] = tmp_path.glob("wa_controller-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {n.split("/")[0] for n in names if not n.startswith("wa_controller-")}
    assert packages == {"controller"}
    assert "controller/simulator/blazz.py" in names
    assert "controller/simulator/waha.py" in names
    assert any(n.startswith("controller/migrations/versions/0001") for n in names)
    assert not [n for n in names if "testing" in n or "devtools" in n]

"""The wheel carries the firmware, board profiles and shipped models: installed alone into a fresh venv, tinyhost
finds them inside the package (not in this checkout) and flashes a virtual board."""

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{result.stderr[-3000:]}")
    (path,) = out.glob("tinyhost-*.whl")
    return path


def test_wheel_contains_firmware_boards_and_models(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "tinyhost/_firmware/tinyfw/runtime.py" in names
    assert "tinyhost/_firmware/tinyfw/engine/__init__.py" in names
    assert {f"tinyhost/_boards/{b}.toml" for b in ("sim", "esp32", "esp32s3", "nano33ble")} <= names
    assert "tinyhost/_models/kws/kws.tflite" in names
    assert {f"tinyhost/_labs/01-first-light/{f}" for f in ("README.md", "steps.sh", "analysis.ipynb")} <= names
    assert not any("__pycache__" in n for n in names)


def test_installed_wheel_flashes_a_virtual_board(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    str(wheel)], check=True, timeout=300)
    # The dependencies (click, pyserial, the MicroPython VM...) come from this environment's site-packages;
    # a .pth in a plain directory is not processed, so this checkout's editable tinyhost stays invisible.
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.check_output(
        [str(python), "-c", "import tinyhost.paths as p; print(p.firmware_dir()); print(p.boards_dir()); "
                            "print(p.labs_dir())"],
        text=True, cwd=tmp_path, env=env).split()
    assert all(str(venv) in w for w in where), where
    result = subprocess.run([str(python), "-m", "tinyhost.cli", "flash", "--board", "sim",
                             "--state-dir", str(tmp_path / "state")],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "already up to date" in result.stdout and "sent " in result.stdout

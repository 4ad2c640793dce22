"""The hands-on labs shipped with tinyhost: find them, and copy one into a working folder for a student.

Each lab is a folder ``NN-name/`` under :func:`tinyhost.paths.labs_dir` with a sheet (``README.md``, whose first
line is ``# Lab N: Title`` and whose ``## Steps`` section starts with a block of commands), the steps as a script
(``steps.sh``) and a notebook for the analysis. A student works on a copy, never on the installed package.
"""

import dataclasses
import re
import shutil
from pathlib import Path

from .errors import UsageError
from .paths import labs_dir

_FOLDER = re.compile(r"^(\d\d)-[a-z0-9-]+$")
_TITLE = re.compile(r"^#\s*Lab\s+(\d+):\s*(.+?)\s*$")
_MINUTES = re.compile(r"^\*\*Time\*\*:\s*(.+?)\s*$", re.MULTILINE)
_IGNORED = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", "*.pyc", "out", ".tinyhost", "clips",
                                  "results.duckdb*", "experiments")   # what a run of the lab leaves


@dataclasses.dataclass(frozen=True)
class Lab:
    number: int
    name: str            # the folder's name, e.g. 01-first-light
    title: str
    time: str            # the sheet's **Time** line: measured on the virtual board
    folder: Path
    first_step: str      # the first command of the sheet's Steps


def _first_step(text):
    steps = text.split("\n## Steps", 1)
    if len(steps) < 2:
        return ""
    block = re.search(r"```[a-z]*\n(.*?)```", steps[1], re.DOTALL)
    for line in (block.group(1).splitlines() if block else []):
        if line.strip() and not line.lstrip().startswith("#"):
            return line.strip()
    return ""


def _read(folder):
    sheet = folder / "README.md"
    text = sheet.read_text(encoding="utf-8")
    first = text.splitlines()[0] if text else ""
    m = _TITLE.match(first)
    if not m or int(m.group(1)) != int(folder.name[:2]):
        raise UsageError(f"{sheet} does not start with '# Lab {int(folder.name[:2])}: Title'",
                         hint="reinstall tinyhost; the lab sheets ship with it")
    time = _MINUTES.search(text)
    return Lab(number=int(m.group(1)), name=folder.name, title=m.group(2), time=time.group(1) if time else "",
               folder=folder, first_step=_first_step(text))


def list_labs():
    """Every shipped lab, by number."""
    root = labs_dir()
    return [_read(p) for p in sorted(root.iterdir()) if _FOLDER.match(p.name) and (p / "README.md").is_file()]


def find(number):
    """The lab numbered ``number``; UsageError listing the numbers there are."""
    labs = list_labs()
    for lab in labs:
        if lab.number == number:
            return lab
    raise UsageError(f"there is no lab {number}",
                     hint=f"pick one of {', '.join(str(lab.number) for lab in labs)} (`tinyhost lab list`)")


def start(number, dest=None):
    """Copy lab ``number`` into ``dest`` (default: its folder's name in the current folder) and return
    ``(lab, dest)``. A folder that exists and is not empty is refused: a student's work is never overwritten."""
    lab = find(number)
    dest = Path(dest) if dest is not None else Path(lab.name)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UsageError(f"{dest} already exists and is not empty",
                         hint=f"name another folder: `tinyhost lab start {number} DIR`, or continue in {dest}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(lab.folder, dest, ignore=_IGNORED, dirs_exist_ok=True)
    for script in dest.glob("*.sh"):
        script.chmod(0o755)
    return lab, dest

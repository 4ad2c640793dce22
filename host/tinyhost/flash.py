"""``tinyhost flash``: put the firmware files (and models) on a board, skipping what is already there.

Plan first, send second: every file's SHA-256 is compared with the board's copy, and the whole plan is checked
against the board's free flash (simulating the write order, since each file is written to a temporary name and
renamed over the old copy) before a single byte is sent. The client writes atomically (``.part``, hash check,
rename), so an interrupted flash never leaves a half-written file under its real name.
"""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DoesNotFit, ModelError
from .paths import firmware_dir

MODELS_DIR = "/models"
# littlefs needs a couple of blocks of its own for metadata while a file is being written and renamed.
FS_METADATA_BLOCKS = 2


@dataclass(frozen=True)
class FlashItem:
    local: Path
    remote: str
    nbytes: int
    sha256: str


@dataclass
class FlashPlan:
    upload: list = field(default_factory=list)     # FlashItem to send
    skip: list = field(default_factory=list)       # FlashItem already on the board, same hash
    replaced_bytes: dict = field(default_factory=dict)   # remote -> size of the copy being replaced

    @property
    def bytes_to_send(self):
        return sum(item.nbytes for item in self.upload)


@dataclass(frozen=True)
class FlashReport:
    sent: tuple            # remote paths written
    skipped: tuple         # remote paths already up to date
    bytes_sent: int
    seconds: float

    @property
    def bytes_per_s(self):
        return self.bytes_sent / self.seconds if self.seconds > 0 else 0.0


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(65536), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _item(local, remote):
    local = Path(local)
    return FlashItem(local=local, remote=remote, nbytes=local.stat().st_size, sha256=sha256_file(local))


def firmware_items(root=None):
    """The firmware files to put on a board: every .py under device/ (the tinyfw package and main.py)."""
    root = Path(root) if root else firmware_dir()
    files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    return [_item(p, "/" + p.relative_to(root).as_posix()) for p in files]


def model_item(path):
    """A model to put on the board under /models/, refused here if the host's reader finds it corrupt."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist", hint="check the path, or see `tinyhost models list`")
    _check_model(path)
    return _item(path, f"{MODELS_DIR}/{path.name}")


def _check_model(path):
    """Run the same reader and validator the device runs, before anything is sent."""
    from .model import validate_model

    validate_model(path)


def blocks(nbytes, block_bytes):
    return -(-nbytes // block_bytes)


def check_fits_profile(items, board):
    """Refuse, before connecting, a file that could never fit the board's filesystem."""
    for item in items:
        if item.nbytes > board.fs_bytes:
            raise DoesNotFit(
                f"{item.local.name} is {item.nbytes} bytes but the {board.name} filesystem holds "
                f"{board.fs_bytes} bytes in all",
                hint="use a smaller model (e.g. int8 quantised, fewer channels) or a board with more flash")


def make_plan(items, remote_hash, remote_size):
    """Split ``items`` into upload/skip by comparing with the board (``remote_hash(path)`` -> hex or None)."""
    plan = FlashPlan()
    for item in items:
        current = remote_hash(item.remote)
        if current == item.sha256:
            plan.skip.append(item)
        else:
            plan.upload.append(item)
            if current is not None:
                plan.replaced_bytes[item.remote] = remote_size(item.remote)
    return plan


def check_fits_free_space(plan, fs_free_bytes, block_bytes):
    """Simulate the writes in order (new copy written beside the old, then renamed over it)."""
    free_blocks = fs_free_bytes // block_bytes
    for item in plan.upload:
        need = blocks(item.nbytes, block_bytes) + FS_METADATA_BLOCKS
        if need > free_blocks:
            raise DoesNotFit(
                f"{item.remote} needs {need * block_bytes} bytes of flash while it is written but the board has "
                f"{free_blocks * block_bytes} bytes free ({plan.bytes_to_send} bytes to send in all)",
                hint="remove files from the board (e.g. old models under /models) or use a smaller model")
        free_blocks -= blocks(item.nbytes, block_bytes)
        free_blocks += blocks(plan.replaced_bytes.get(item.remote, 0), block_bytes)

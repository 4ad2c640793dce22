"""Where a virtual board keeps its flash: a per-board state directory holding a littlefs2 image.

All virtual boards keep their state under one root, each board in a folder named after the board it emulates:
``<root>/esp32/``, ``<root>/esp32s3/``. The root is ``--state-dir`` where a command has it, else
``$TINYHOST_STATE_DIR``, else ``~/.cache/tinyhost/sim`` (tinyhost's cache, see :func:`tinyhost.paths.cache_dir`).
The image has exactly the profile's filesystem size, so a write past it fails with ENOSPC inside the board, as on
a real one. One virtual board at a time may use a state directory (a lock file says which).
"""

import errno
import fcntl
import os
from pathlib import Path

from ..errors import UsageError
from ..paths import cache_dir

FLASH_IMAGE_NAME = "flash.img"
ROMFS_IMAGE_NAME = "romfs.img"
LOCK_NAME = "lock"
ERASED_BYTE = b"\xff"
STATE_ROOT_ENV = "TINYHOST_STATE_DIR"


def state_root(root=None):
    """The folder holding every virtual board's state folder: ``root``, else $TINYHOST_STATE_DIR, else
    ``~/.cache/tinyhost/sim``."""
    root = root or os.environ.get(STATE_ROOT_ENV)
    return Path(root).expanduser().resolve() if root else cache_dir("sim")


def board_state_dir(board_name, root=None):
    """The state folder of the virtual ``board_name`` (the profile it emulates) under :func:`state_root`."""
    return state_root(root) / board_name


def lock_state_dir(state_dir):
    """Hold the state directory for this process (released when the returned file is closed or we exit)."""
    state_dir = Path(state_dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the virtual board's state directory {state_dir}: {e.strerror}",
                         hint="pass --state-dir with a writable directory") from None
    lock_file = open(state_dir / LOCK_NAME, "a+")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        lock_file.close()
        if e.errno in (errno.EAGAIN, errno.EACCES):
            raise UsageError(f"another virtual board is already using {state_dir}",
                             hint="stop that one (Ctrl-C in its terminal) or pass a different --state-dir") from None
        raise
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(f"{os.getpid()}\n")
    lock_file.flush()
    return lock_file


def prepare_flash_image(state_dir, board, fresh=False):
    """The path of the board's flash image, created erased (all 0xFF) when missing or when ``fresh``.

    An image of another size (the profile changed) is refused rather than silently reformatted."""
    return _prepare_image(Path(state_dir) / FLASH_IMAGE_NAME, board.fs_bytes, board, "filesystem", fresh)


def prepare_romfs_image(state_dir, board, fresh=False):
    """The path of the board's ROMFS partition image (erased when new), or None when the profile has none."""
    if not board.romfs_bytes:
        return None
    return _prepare_image(Path(state_dir) / ROMFS_IMAGE_NAME, board.romfs_bytes, board, "ROMFS partition", fresh)


def _prepare_image(image, nbytes, board, what, fresh):
    if image.exists() and not fresh:
        size = image.stat().st_size
        if size != nbytes:
            raise UsageError(
                f"the image {image} holds {size} bytes but board {board.name!r} has a {nbytes}-byte {what}",
                hint=f"delete {image} to start with an empty {what}, or pass another --state-dir")
        return image
    part = image.with_name(image.name + ".part")
    with open(part, "wb") as f:
        block = ERASED_BYTE * board.fs_block_bytes
        for _ in range(nbytes // board.fs_block_bytes):
            f.write(block)
    os.replace(part, image)
    return image


def read_flash_files(image, board):
    """``{path: bytes}`` of every file in a (not running) virtual board's flash image, read with littlefs-python.

    For tests and diagnostics; a running board may have writes in flight."""
    from littlefs import LittleFS

    with open(image, "rb") as f:
        data = f.read()
    fs = LittleFS(block_size=board.fs_block_bytes, block_count=board.fs_bytes // board.fs_block_bytes, mount=False)
    fs.context.buffer = bytearray(data)
    fs.mount()
    files = {}
    for top, _dirs, names in fs.walk("/"):
        for name in names:
            path = top.rstrip("/") + "/" + name
            with fs.open(path, "rb") as fh:
                files[path] = fh.read()
    return files

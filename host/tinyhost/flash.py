"""``tinyhost flash``: put the firmware files (and models) on a board, skipping what is already there.

Plan first, send second: every file's SHA-256 is compared with the board's copy, and the whole plan is checked
against the board's free flash (simulating the write order, since each file is written to a temporary name and
renamed over the old copy) before a single byte is sent. The client writes atomically (``.part``, hash check,
rename), so an interrupted flash never leaves a half-written file under its real name.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DoesNotFit, ModelError, TinyhostError, UsageError
from .hashing import sha256_file
from .paths import firmware_dir

log = logging.getLogger(__name__)

MODELS_DIR = "/models"
# The file naming the model the firmware loads by itself for a runner's text commands (MLPerf Tiny / EEMBC):
# device/tinyfw/cmd_text.py's BOOT_MODEL_FILE (tests/test_device_constants.py checks the copy).
BOOT_MODEL_FILE = "/boot_model"
# The file naming the MLPerf Tiny benchmark the firmware's `profile` answers with when it is not the one the boot
# model's input size tells (sww01, the streaming wakeword test, runs the kws model): device/tinyfw/boot_model.py's
# MLPERF_MODEL_FILE.
MLPERF_MODEL_FILE = "/mlperf_model"
MLPERF_MODELS = ("kws01", "vww01", "ic01", "ad01", "sww01")
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
    removed: tuple = ()    # remote paths removed: an older firmware's files the one sent does not have

    @property
    def bytes_per_s(self):
        return self.bytes_sent / self.seconds if self.seconds > 0 else 0.0


def _item(local, remote):
    local = Path(local)
    return FlashItem(local=local, remote=remote, nbytes=local.stat().st_size, sha256=sha256_file(local))


FIRMWARE_PACKAGE = "tinyfw"


def firmware_items(root=None, board=None):
    """The firmware files to put on a board's filesystem: every .py under device/ (the tinyfw package and
    main.py). On a board with a ROMFS partition only main.py: the package goes into the partition with the
    models (:func:`put_models`), where its code runs in place instead of taking heap."""
    root = Path(root) if root else firmware_dir()
    files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    if board is not None and board.romfs_bytes:
        files = [p for p in files if p.relative_to(root).parts[0] != FIRMWARE_PACKAGE]
    return [_item(p, "/" + p.relative_to(root).as_posix()) for p in files]


# The longest model file name put on a board, in UTF-8 bytes: its plan's name and the board's filesystem (255 at
# most, littlefs and FAT) must hold it with room to spare.
MAX_MODEL_NAME_BYTES = 100


def check_model_name(name):
    """Refuse a model file name the board could not hold or list: control characters (a newline would make up
    entries in LIST's line-per-file answer) or more than MAX_MODEL_NAME_BYTES bytes. Raises UsageError."""
    bad = sorted({c for c in name if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0})
    if bad:
        raise UsageError(f"model file name {name!r} has control characters ({', '.join(repr(c) for c in bad)})",
                         hint="rename the file: letters, digits, '.', '-', '_'")
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > MAX_MODEL_NAME_BYTES:
        raise UsageError(f"model file name {name[:40]!r}... is {size} bytes long, more than the board takes "
                         f"({MAX_MODEL_NAME_BYTES})", hint="rename the file to a shorter name")


def model_item(path, board=None):
    """A model to put on the board under /models/.

    Refused here, before anything is sent, when its name is unfit for the board (:func:`check_model_name`), when it
    cannot fit ``board``'s filesystem or when the host's copy of the device's reader and validator finds it corrupt
    or unsupported.
    """
    path = Path(path)
    check_model_name(path.name)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist", hint="check the path, or see `tinyhost models list`")
    item = _item(path, f"{MODELS_DIR}/{path.name}")
    if board is not None:
        check_fits_profile([item], board)
    from .model import inspect

    inspect(path, tflm=False)
    return item


def model_remote_path(model_path, board):
    """Where a model goes on ``board``: in its ROMFS partition when it has one (/rom/models/, weights read in
    place), else on its filesystem (/models/)."""
    from .romfs import MOUNT_POINT

    return f"{MOUNT_POINT if board.romfs_bytes else ''}{MODELS_DIR}/{Path(model_path).name}"


def set_boot_model(dev, remote_path):
    """Make the model at ``remote_path`` on the board the one its firmware loads by itself when an MLPerf Tiny /
    EEMBC runner's first command comes (INFO reports it as ``boot_model``); None: none named any more (the firmware
    then looks for /model.tflite and /models/model.tflite)."""
    if remote_path is None:
        if dev.file_hash(BOOT_MODEL_FILE) is not None:
            dev.remove(BOOT_MODEL_FILE)
    else:
        dev.put_file(remote_path.encode(), BOOT_MODEL_FILE)


def set_mlperf_model(dev, name):
    """Make the firmware's `profile` answer ``m-model-[name]`` (one of MLPERF_MODELS), the benchmark an MLPerf Tiny
    runner then runs; None: the one the boot model's input size tells (kws01, vww01, ic01, ad01)."""
    if name is None:
        if dev.file_hash(MLPERF_MODEL_FILE) is not None:
            dev.remove(MLPERF_MODEL_FILE)
        return
    if name not in MLPERF_MODELS:
        raise UsageError(f"{name!r} is not an MLPerf Tiny benchmark", hint=f"name one of {', '.join(MLPERF_MODELS)}")
    dev.put_file(name.encode(), MLPERF_MODEL_FILE)


# The virtual board's clock reads the board-time model's estimates of the models on it from this file at each load
# (device/tinyfw/cmd_load.py's BOARD_TIME_FILE; tests/test_stream.py checks the copy): "version invoke_ns hop_ns path"
# a line.
BOARD_TIME_FILE = "/board_time"


def board_time_lines(model_paths, profile):
    """{remote path: line of BOARD_TIME_FILE} for the models on a virtual ``profile`` that have a board-time
    estimate (viper backend, the weights mode the board reads them in; the front end's cost per hop, where the model
    has an MFCC front end)."""
    from . import boardtime

    lines = {}
    for path in model_paths:
        bt = boardtime.for_board(path, profile, True, "viper")
        if bt is None:
            continue
        remote = model_remote_path(path, profile)
        lines[remote] = f"{bt.model} {bt.total_ns} {boardtime.frontend_hop_ns(path, profile)} {remote}"
    return lines


def write_board_times(dev, model_paths, profile):
    """Add the estimates of ``model_paths`` to the virtual board's BOARD_TIME_FILE (lines of other models kept)."""
    new = board_time_lines(model_paths, profile)
    if not new:
        return
    old = {}
    if dev.file_hash(BOARD_TIME_FILE) is not None:
        for line in dev.get_file(BOARD_TIME_FILE).decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 4:
                old[parts[3]] = line
    old.update(new)
    dev.put_file(("\n".join(old.values()) + "\n").encode(), BOARD_TIME_FILE)


def romfs_image(model_paths, mpy_abi=None):
    """The ROMFS image of the firmware package (tinyfw/, precompiled for ``mpy_abi`` when mpy-cross can; mounted:
    /rom/tinyfw, imported from there) and of ``model_paths`` with their load plans (models/, /rom/models/)."""
    from .model.plan import plan_file, plan_remote_path
    from .mpy import precompile
    from .romfs import build_image

    package = [i for i in firmware_items() if i.remote.startswith(f"/{FIRMWARE_PACKAGE}/")]
    package = precompile(package, mpy_abi, _item)
    files = [(i.local, i.remote.lstrip("/")) for i in package]
    for path in model_paths:
        path = Path(path)
        files.append((path, f"models/{path.name}"))
        files.append((plan_file(path), "models/" + plan_remote_path(path.name)))
    return build_image(files)


def put_models(dev, model_paths, board, progress=None, force=False):
    """Put models (checked first, see :func:`model_item`) and their plans where :func:`model_remote_path` says,
    sending only what differs. Returns a :class:`FlashReport`. A ROMFS partition is written whole, with the
    firmware package (:func:`romfs_image`): it then holds exactly these models."""
    import time

    from . import romfs

    items = [model_item(p, None if board.romfs_bytes else board) for p in model_paths]
    if not board.romfs_bytes:
        return flash_items(dev, items, board, progress=progress, compile_mpy=False, force=force)
    start = time.monotonic()
    # the board's .mpy ABI from its REPL (INFO may not find the heap for its reply beside a loaded model)
    abi = int(dev.run_script("import sys\nprint(getattr(sys.implementation, '_mpy', 0))").split()[-1])
    image = romfs_image(model_paths, abi or None)
    # a copy of the package on the filesystem would be imported instead ('' comes first on sys.path)
    removed = _remove_tree(dev, f"/{FIRMWARE_PACKAGE}")
    callback = (lambda sent, total: progress(romfs.MOUNT_POINT, sent, total)) if progress else None
    written = romfs.deploy(dev, image, board, progress=callback, force=force)
    if removed and not written:
        dev.soft_reset()
    remote = tuple(model_remote_path(i.local, board) for i in items)
    return FlashReport(sent=remote if written else (), skipped=() if written else remote,
                       bytes_sent=len(image) if written else 0, seconds=time.monotonic() - start)


def _remove_tree(dev, path):
    """Remove ``path`` and everything under it from the board's filesystem; True when there was something."""
    return bool(_prune_tree(dev, path))


def _prune_tree(dev, path, keep=frozenset()):
    """Remove every file under ``path`` on the board whose path is not in ``keep``, and each directory that leaves
    empty (``path`` too). Returns the paths removed; none when ``path`` is not there."""
    try:
        entries = dev.list_files(path)
    except TinyhostError:           # nothing there
        return []
    removed, kept = [], False
    for e in entries:
        full = f"{path}/{e.name}"
        if e.is_dir:
            below = _prune_tree(dev, full, keep)
            removed += below
            kept = kept or full not in below
        elif full in keep:
            kept = True
        else:
            dev.remove(full)
            removed.append(full)
    if not kept:
        dev.remove(path)
        removed.append(path)
    return removed


def with_plans(items):
    """``items`` plus, for each ``.tflite`` model among them, its load plan beside it (``MODEL.plan``, built on
    the host with the firmware's engine code; the board uses it only when it matches the model's sha256)."""
    from .model.plan import plan_file, plan_remote_path

    out = list(items)
    listed = {item.remote for item in out}
    for item in items:
        if item.remote.startswith(MODELS_DIR + "/") and item.remote.endswith(".tflite"):
            remote = plan_remote_path(item.remote)
            if remote not in listed:
                out.append(_item(plan_file(item.local), remote))
                listed.add(remote)
    return out


# How much flash littlefs2 takes, as MicroPython configures it (VfsLfs2 with its default readsize = progsize = 32:
# extmod/vfs_lfs.c; cache_size = min(block size, 4 * 32): extmod/vfs_lfsx.c). The superblock and the root directory
# share a metadata pair (two blocks), every other directory has its own pair, and a file takes whole blocks linked
# as littlefs's CTZ skip-list (block i > 0 starts with ctz(i) + 1 four-byte pointers) unless it is small enough to
# live inline in its directory's metadata (littlefs's inline_max: min(cache_size, attr_max, block_size / 8)).
LFS_CACHE_BYTES = 128
LFS_ATTR_MAX = 1022
LFS_PAIR_BLOCKS = 2


def lfs_file_blocks(nbytes, block_bytes):
    """Blocks a file of ``nbytes`` takes on littlefs2 (0: inline in its directory's metadata pair)."""
    if nbytes <= min(LFS_CACHE_BYTES, LFS_ATTR_MAX, block_bytes // 8):
        return 0
    count = capacity = 0
    while capacity < nbytes:
        capacity += block_bytes - 4 * (count & -count).bit_length()
        count += 1
    return count


def lfs_blocks(files, block_bytes):
    """Blocks a littlefs2 filesystem holding ``files`` ({remote path: size}) takes in all: the root's metadata pair,
    one pair per directory and each file's blocks. A lower bound: a directory with very many entries needs more."""
    dirs = {"/".join(path.split("/")[:depth]) for path in files for depth in range(2, path.count("/") + 1)}
    return LFS_PAIR_BLOCKS * (1 + len(dirs)) + sum(lfs_file_blocks(n, block_bytes) for n in files.values())


@dataclass(frozen=True)
class Footprint:
    """Where the firmware and models go on a board and how much of it they take."""
    board: str
    fs_files: dict          # remote path -> bytes, on the filesystem
    fs_blocks: int          # littlefs blocks those take (lfs_blocks), the root's included
    fs_block_count: int     # blocks of the board's filesystem
    romfs_image_bytes: int  # the ROMFS image (firmware package and models), 0 on a board without a partition
    romfs_bytes: int        # the board's ROMFS partition

    @property
    def fits(self):
        return self.fs_blocks <= self.fs_block_count and self.romfs_image_bytes <= self.romfs_bytes


def footprint(board, model_paths=(), mpy_abi=None):
    """What :func:`flash_items` and :func:`put_models` would put on ``board`` with ``model_paths`` (the firmware
    precompiled for ``mpy_abi`` where mpy-cross can), as a :class:`Footprint`. Computed on the host."""
    from .mpy import precompile

    items = firmware_items(board=board)
    image = b""
    if board.romfs_bytes:
        image = romfs_image(model_paths, mpy_abi)
    else:
        items = with_plans(items + [_item(p, f"{MODELS_DIR}/{Path(p).name}") for p in model_paths])
    items = precompile(items, mpy_abi, _item)
    files = {item.remote: item.nbytes for item in items}
    return Footprint(board=board.name, fs_files=files, fs_blocks=lfs_blocks(files, board.fs_block_bytes),
                     fs_block_count=board.fs_bytes // board.fs_block_bytes, romfs_image_bytes=len(image),
                     romfs_bytes=board.romfs_bytes)


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
    """Simulate the writes in order (new copy written beside the old, then renamed over it), each file taking the
    blocks littlefs gives it (:func:`lfs_file_blocks`)."""
    free_blocks = fs_free_bytes // block_bytes
    for item in plan.upload:
        need = lfs_file_blocks(item.nbytes, block_bytes) + FS_METADATA_BLOCKS
        if need > free_blocks:
            raise DoesNotFit(
                f"{item.remote} needs {need * block_bytes} bytes of flash while it is written but the board has "
                f"{free_blocks * block_bytes} bytes free ({plan.bytes_to_send} bytes to send in all)",
                hint="remove files from the board (e.g. old models under /models) or use a smaller model")
        free_blocks -= lfs_file_blocks(item.nbytes, block_bytes)
        free_blocks += lfs_file_blocks(plan.replaced_bytes.get(item.remote, 0), block_bytes)


def _remote_sizes(dev, remote_paths):
    """Sizes of the given remote files, from one directory listing per directory."""
    sizes, listed = {}, {}
    for path in remote_paths:
        directory, _, name = path.rpartition("/")
        directory = directory or "/"
        if directory not in listed:
            try:
                listed[directory] = {e.name: e.size for e in dev.list_files(directory)}
            except TinyhostError:
                listed[directory] = {}
        sizes[path] = listed[directory].get(name, 0)
    return sizes


def _ensure_dirs(dev, remote_paths):
    made = set()
    for path in remote_paths:
        parts = path.strip("/").split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            directory = "/" + "/".join(parts[:depth])
            if directory not in made:
                dev.mkdir(directory)
                made.add(directory)


def flash_items(dev, items, board, force=False, progress=None, compile_mpy=True):
    """Send ``items`` that differ from the board's copies; returns a :class:`FlashReport`.

    ``progress(name, sent, total)`` is called as bytes go out, and first with ``sent=0`` for every file that will
    be sent, before the first byte goes out (so one progress bar can cover them all). When firmware files were sent
    the board is soft-reset afterwards, so it runs the new code with an unfragmented heap. With ``compile_mpy`` the
    ``.py`` modules are sent precompiled for the board's bytecode version and architecture when mpy-cross can
    produce them.
    """
    import time

    from .mpy import precompile

    items = with_plans(items)
    check_fits_profile(items, board)
    info = dev.info()
    if compile_mpy:
        mpy_abi = int(info.raw.get("mpy") or 0) or None
        items = precompile(items, mpy_abi, _item)
    remote_hash = (lambda path: None) if force else dev.file_hash
    hashes = {item.remote: remote_hash(item.remote) for item in items}
    sizes = _remote_sizes(dev, [r for r, h in hashes.items() if h is not None])
    plan = make_plan(items, hashes.get, sizes.get)
    check_fits_free_space(plan, info.fs_free_bytes, board.fs_block_bytes)
    _ensure_dirs(dev, [item.remote for item in plan.upload])
    start = time.monotonic()
    if progress is not None:
        for item in plan.upload:
            progress(item.remote, 0, item.nbytes)
    for item in plan.upload:
        callback = None
        if progress is not None:
            callback = (lambda name: lambda sent, total: progress(name, sent, total))(item.remote)
        dev.put_file(item.local, item.remote, progress=callback)
    package = f"/{FIRMWARE_PACKAGE}"
    stale = []
    if any(item.remote.startswith(package + "/") for item in items):
        # The package on the board is the one sent, nothing more: an older version's modules would take flash,
        # and a stale x.py would be imported instead of the new x.mpy.
        stale = _prune_tree(dev, package, keep={item.remote for item in items})
        if stale:
            log.info("removed from the board (not in this firmware): %s", ", ".join(stale))
    if plan.upload or stale:
        # Restart so the board runs new firmware code, and so a model is loaded into a heap that the transfer
        # buffers and the code that ran before have not left in pieces (on a 100 KB heap that decides it).
        log.info("files changed on the board: soft reset")
        dev.soft_reset()
    return FlashReport(sent=tuple(i.remote for i in plan.upload), skipped=tuple(i.remote for i in plan.skip),
                       bytes_sent=plan.bytes_to_send, seconds=time.monotonic() - start, removed=tuple(stale))

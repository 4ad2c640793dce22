"""ROMFS images: MicroPython's read-only filesystem for a flash partition a board maps into its address space.

Files in a mounted ROMFS (``/rom``) support the buffer protocol, so the engine reads a model's weights in place
(``weights="mapped"``, docs/engine.md). Images are built with mpremote's writer, the format ``mpremote romfs
build`` makes and ``mpremote romfs deploy`` writes to a board."""

import binascii
import hashlib
import logging
from pathlib import Path

from .atomic import write_bytes_atomic
from .errors import DeviceError, DoesNotFit

log = logging.getLogger(__name__)

MOUNT_POINT = "/rom"
CHUNK_BYTES = 4096      # the image goes into the partition in chunks of this size, its first chunk (the header) last
CHUNK_TRIES = 3         # sends of one chunk through the raw REPL before giving up


def build_image(files):
    """The bytes of a ROMFS image holding ``files``: paths (at the root, under their own names) or
    ``(local_path, "dir/.../name")`` pairs."""
    from mpremote.romfs import VfsRomWriter

    tree = {}                   # name -> bytes (a file) or dict (a directory)
    for f in files:
        local, name = (f, Path(f).name) if isinstance(f, (str, Path)) else f
        *dirs, base = name.split("/")
        node = tree
        for d in dirs:
            node = node.setdefault(d, {})
        node[base] = Path(local).read_bytes()

    w = VfsRomWriter()

    def emit(node):
        for name in sorted(node):
            if isinstance(node[name], dict):
                w.opendir(name)
                emit(node[name])
                w.closedir()
            else:
                w.mkfile(name, node[name])

    emit(tree)
    return w.finalise()


def write_image(files, dest):
    """Write the ROMFS image of ``files`` to ``dest`` (atomically); returns ``dest``."""
    write_bytes_atomic(dest, build_image(files))
    return Path(dest)


# Run on the board first, in its raw REPL (runtime stopped): unmount /rom (the soft reset after a write mounts the
# new image) and get ROMFS partition 0 as vfs.rom_ioctl (MicroPython >= 1.25) gives it on the esp32 and nrf ports:
# the partition's flash block device (esp32.Partition, nrf.Flash; the ports' rom_ioctl has no write calls of its
# own), written as `mpremote romfs deploy` writes it: erase(n) erases the blocks an n-byte image takes, write()
# writes a 4 KB chunk into erased flash. The first chunk, which holds the ROMFS header, is written last:
# interrupted, the partition has no header (erased flash), so the board boots without /rom rather than mount an
# image whose files are cut short, and the next deploy writes it again (its hash differs).
_PARTITION = """
import vfs
try:
    vfs.umount("/rom")
except OSError:
    pass
dev = vfs.rom_ioctl(2, 0)
if isinstance(dev, int):
    raise OSError(-dev)
bs = dev.ioctl(5, 0)
def erase(n):
    for b in range((n + bs - 1) // bs):
        dev.ioctl(6, b)
def write(off, data):
    dev.writeblocks(off // bs, data, off % bs)
"""

# Then, with the image put on the board's filesystem: copy it into the partition in 4 KB chunks (little heap) and
# remove the file; _HASH follows it in the same run.
_DEPLOY = _PARTITION + """
import os
n = os.stat({src!r})[6]
erase(n)
buf = bytearray(4096)
with open({src!r}, "rb") as f:
    for off in list(range(4096, n, 4096)) + [0]:
        f.seek(off)
        k = f.readinto(buf)
        write(off, buf if k == len(buf) else buf[:k])
os.remove({src!r})
"""

# Or, when the board's filesystem has no room to stage the image: each chunk comes in its own exec, base64-encoded
# with its CRC-32, through put().
_WRITER = _PARTITION + """
import binascii
erase({n})
def put(off, crc, text):
    data = binascii.a2b_base64(text)
    if binascii.crc32(data) != crc:
        raise ValueError("chunk at %d arrived damaged" % off)
    write(off, data)
"""

# The sha256 of the first n bytes of ROMFS partition 0 ("-" when there is no partition or it is smaller).
_HASH = """
import vfs, hashlib, binascii
try:
    mv = vfs.rom_ioctl(2, 0)
except AttributeError:
    mv = -1
if not isinstance(mv, int):
    mv = memoryview(mv)
if isinstance(mv, int) or len(mv) < {n}:
    print("-")
else:
    h = hashlib.sha256()
    for i in range(0, {n}, 4096):
        h.update(mv[i:min(i + 4096, {n})])
    print(binascii.hexlify(h.digest()).decode())
"""


def partition_sha256(dev, nbytes):
    """sha256 hex of the first ``nbytes`` of the board's ROMFS partition, or None without one."""
    out = dev.run_script(_HASH.format(n=nbytes)).decode().strip()
    return None if out == "-" else out


def chunk_offsets(nbytes):
    """Where the image's chunks go, in write order: the first one, which holds the ROMFS header, last."""
    return list(range(CHUNK_BYTES, nbytes, CHUNK_BYTES)) + [0]


def fs_free_bytes(dev):
    """Free bytes on the board's filesystem (os.statvfs of /), asked through the raw REPL."""
    out = dev.run_script("import os\ns = os.statvfs('/')\nprint(s[0] * s[3])").split()
    return int(out[-1])


def deploy(dev, image, board, progress=None, force=False):
    """Write ``image`` (bytes) to the board's ROMFS partition 0 unless it holds it already; True when written.

    When the board's filesystem has room for it, the image goes there first with the runtime's checked, atomic
    file transfer (a garbled frame is sent again), then the board copies it into the partition. When it has not
    (the Nano 33 BLE's 64 KB filesystem and an image of firmware and model), the image goes straight into the
    partition through the raw REPL, 4 KB at a time, each chunk checked by its CRC-32 on the board and sent again
    when damaged. Either way the header goes last and the partition's hash is checked; the board is soft-reset
    after a write, which mounts the new image at /rom."""
    if len(image) > board.romfs_bytes:
        raise DoesNotFit(f"the ROMFS image is {len(image)} bytes but {board.name}'s ROMFS partition holds "
                         f"{board.romfs_bytes}", hint="put fewer or smaller models in it")
    digest = hashlib.sha256(image).hexdigest()
    if not force and partition_sha256(dev, len(image)) == digest:
        return False
    from .flash import FS_METADATA_BLOCKS, lfs_file_blocks

    free_blocks = fs_free_bytes(dev) // board.fs_block_bytes
    if lfs_file_blocks(len(image), board.fs_block_bytes) + FS_METADATA_BLOCKS <= free_blocks:
        got = _deploy_staged(dev, image, progress)
    else:
        log.info("the filesystem has %d blocks free, too few to stage the %d-byte image: writing it through the "
                 "raw REPL", free_blocks, len(image))
        got = _deploy_through_repl(dev, image, progress)
    if got != digest:
        raise DeviceError(f"the board's ROMFS partition reads back {got}, not the image written "
                          f"({digest[:16]}...)", hint="run the command again; if it persists the flash is worn")
    return True


def _deploy_staged(dev, image, progress):
    temp = "/romfs-deploy.img"
    dev.put_file(image, temp, progress=progress)
    # from a fresh start: no module imported from the partition (the firmware's) while it is rewritten
    out = dev.run_script(_DEPLOY.format(src=temp) + _HASH.format(n=len(image)), timeout_s=60.0, fresh=True)
    dev.soft_reset()
    return out.decode().split()[-1]


def _deploy_through_repl(dev, image, progress):
    # from a fresh start, as above; the runtime is not started until the new image is mounted (a soft reset)
    with dev.raw_repl(fresh=True) as repl:
        repl.exec(_WRITER.format(n=len(image)), timeout_s=60.0)
        sent = 0
        for off in chunk_offsets(len(image)):
            chunk = image[off:off + CHUNK_BYTES]
            code = f"put({off}, {binascii.crc32(chunk)}, {binascii.b2a_base64(chunk, newline=False)!r})"
            for attempt in range(1, CHUNK_TRIES + 1):
                try:
                    repl.exec(code)
                    break
                except DeviceError as e:
                    if attempt == CHUNK_TRIES:
                        raise
                    log.info("chunk at %d: %s; sending it again", off, e)
            sent += len(chunk)
            if progress is not None:
                progress(sent, len(image))
        out = repl.exec(_HASH.format(n=len(image)), timeout_s=60.0)
        repl.soft_reset()
    return out.decode().split()[-1]

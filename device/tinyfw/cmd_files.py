# tinyfw file commands: LIST, HASH, REMOVE, RENAME, MKDIR, PUT_BEGIN/DATA/END/ABORT, GET (docs/protocol.md).
#
# A put writes `path.part`, checks size and sha256 of what reached the flash, then renames it over `path`, so an
# interrupted transfer never leaves a half-written file under the real name. Functions take the Runtime `rt`.
# The runtime imports this module on the first file command and drops it again before a model is loaded (its
# code is ~9 KB of heap on the 64-bit VM; docs/engine.md, "Memory"); an upload in progress keeps it.
# Bootstrap note: the host may send this file through the raw REPL into the same namespace as runtime.py, so its
# top-level names must not clash with runtime.py's and its tinyfw imports are single lines the host can drop.
import os

from hashlib import sha256
from tinyfw.frame import DevError, put32, u16, u32

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

# Protocol numbers are private copies (compiled away; tests/test_device_constants.py checks them).
_HEADER_BYTES = const(10)
_LIST = const(0x10)
_HASH = const(0x11)
_REMOVE = const(0x12)
_RENAME = const(0x13)
_MKDIR = const(0x14)
_PUT_BEGIN = const(0x15)
_PUT_DATA = const(0x16)
_PUT_END = const(0x17)
_PUT_ABORT = const(0x18)
_GET = const(0x19)
_E_BAD_ARGS = const(2)
_E_EXISTS = const(4)
_E_NO_SPACE = const(5)
_E_IO = const(6)
_E_HASH_MISMATCH = const(7)
_E_STATE = const(11)
_EEXIST = const(17)


class Upload:
    def __init__(self, rt, path, size, sha):
        self.path = path
        self.size = size
        self.sha = sha
        self.offset = 0
        self.hash = sha256()
        # the data of a full-size PUT_DATA frame, as a view made once: the hot path allocates nothing
        self.full = rt.fio.mv[_HEADER_BYTES + 4:_HEADER_BYTES + rt.max_payload]
        self.file = open(path + ".part", "wb")

    def apply(self, rt):
        """Write a PUT_DATA frame's bytes (put_data_apply); the runtime calls it for retried copies too."""
        put_data_apply(rt)

    def close(self, remove):
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass
            self.file = None
        if remove:
            try:
                os.remove(self.path + ".part")
            except OSError:
                pass


def payload_str(rt, start=0):
    return bytes(rt.payload_view(start)).decode()


def file_sha256(rt, path):
    """(sha256 digest, size) of a file, read through the frame buffer."""
    h = sha256()
    size = 0
    full = rt.fio.full_payload
    with open(path, "rb") as f:
        while True:
            n = f.readinto(full)
            if not n:
                break
            h.update(full if n == len(full) else full[:n])
            size += n
    return h.digest(), size


def cmd_list(rt):
    if rt.fio.n < 2:
        raise DevError(_E_BAD_ARGS, "LIST wants start u16 and a path")
    start = u16(rt.fio.buf, _HEADER_BYTES)
    path = payload_str(rt, 2) or "/"
    out = rt.fio.payload
    pos = 1
    more = 0
    index = 0
    for entry in os.ilistdir(path):
        if index >= start:
            name = entry[0]
            is_dir = entry[1] & 0x4000
            if is_dir:
                size = 0
            elif len(entry) > 3 and entry[3] >= 0:
                size = entry[3]
            else:
                size = os.stat(path_join(path, name))[6]
            if "\n" in name or "\\" in name:       # one line an entry, whatever the name holds
                name = name.replace("\\", "\\\\").replace("\n", "\\n")
            line = ("%s %d %s\n" % ("d" if is_dir else "f", size, name)).encode()
            if pos + len(line) > rt.max_payload:
                more = 1
                break
            out[pos:pos + len(line)] = line
            pos += len(line)
        index += 1
    out[0] = more
    rt.reply_big(pos)


def cmd_hash(rt):
    digest, size = file_sha256(rt, payload_str(rt))
    rt.small[:32] = digest
    put32(rt.small, 32, size)
    rt.reply_small(36)


def cmd_remove(rt):
    path = payload_str(rt)
    if os.stat(path)[0] & 0x4000:
        os.rmdir(path)
    else:
        os.remove(path)
    rt.reply_small(0)


def cmd_rename(rt):
    raw = bytes(rt.payload_view())
    sep = raw.find(b"\0")
    if sep < 0:
        raise DevError(_E_BAD_ARGS, "RENAME wants 'src\\0dst'")
    replace_file(raw[:sep].decode(), raw[sep + 1:].decode())
    rt.reply_small(0)


def cmd_mkdir(rt):
    makedirs(payload_str(rt))
    rt.reply_small(0)


def cmd_put_begin(rt):
    if rt.fio.n < 37:
        raise DevError(_E_BAD_ARGS, "PUT_BEGIN wants size u32, sha256 (32 bytes) and a path")
    put_cancel(rt)
    size = u32(rt.fio.buf, _HEADER_BYTES)
    sha = bytes(rt.payload_view(4, 36))
    path = payload_str(rt, 36)
    parent = path.rsplit("/", 1)[0]
    if parent:
        makedirs(parent)
    free = fs_free_bytes(parent or "/")
    if free is not None and size > free:
        raise DevError(_E_NO_SPACE, "%s needs %d bytes, the filesystem has %d free" % (path, size, free))
    rt.upload = Upload(rt, path, size, sha)
    rt.reply_small(0)


def cmd_put_data(rt):
    put_data_apply(rt)
    rt.reply_ack()


def put_data_apply(rt):
    """Write a PUT_DATA frame's bytes. Idempotent by offset: a frame may overlap what is written already (the host
    cut its data anew after a loss, or this is a retried copy); only the bytes past the current end are written."""
    fio = rt.fio
    up = rt.upload
    n = fio.n - 4
    if up is None:
        raise DevError(_E_STATE, "PUT_DATA without PUT_BEGIN")
    offset = u32(fio.buf, _HEADER_BYTES)
    if n < 0 or offset > up.offset or offset + n > up.size:
        raise DevError(_E_STATE, "PUT_DATA at %d+%d, expected offset %d of %d" % (offset, n, up.offset, up.size))
    skip = up.offset - offset
    if skip < n:
        if skip == 0 and n == rt.max_payload - 4:
            data = up.full
        else:
            data = fio.mv[_HEADER_BYTES + 4 + skip:_HEADER_BYTES + 4 + n]
        try:
            up.file.write(data)
        except OSError:
            put_cancel(rt)
            raise
        up.hash.update(data)
        up.offset = offset + n


def cmd_put_end(rt):
    up = rt.upload
    if up is None:
        raise DevError(_E_STATE, "PUT_END without PUT_BEGIN")
    rt.upload = None
    up.close(False)
    try:
        if up.offset != up.size:
            raise DevError(_E_STATE, "%s: got %d of %d bytes" % (up.path, up.offset, up.size))
        if up.hash.digest() != up.sha:
            raise DevError(_E_HASH_MISMATCH, "%s: sha256 of the received data differs from the host's" % up.path)
        if file_sha256(rt, up.path + ".part") != (up.sha, up.size):
            raise DevError(_E_IO, "%s: the file read back from flash differs from the data received" % up.path)
        replace_file(up.path + ".part", up.path)
    except BaseException:
        up.close(True)
        raise
    rt.reply_small(0)


def cmd_put_abort(rt):
    put_cancel(rt)
    rt.reply_small(0)


def put_cancel(rt):
    """End an upload in progress, removing its partial file."""
    if rt.upload is not None:
        rt.upload.close(True)
        rt.upload = None


def cmd_get(rt):
    if rt.fio.n < 7:
        raise DevError(_E_BAD_ARGS, "GET wants offset u32, max u16 and a path")
    buf = rt.fio.buf
    offset = u32(buf, _HEADER_BYTES)
    want = min(u16(buf, _HEADER_BYTES + 4), rt.max_payload - 4)
    path = payload_str(rt, 6)
    size = os.stat(path)[6]
    n = 0
    if offset < size and want:
        with open(path, "rb") as f:
            f.seek(offset)
            n = f.readinto(rt.fio.mv[_HEADER_BYTES + 4:_HEADER_BYTES + 4 + want]) or 0
    put32(buf, _HEADER_BYTES, size)
    rt.reply_big(4 + n)


def path_join(d, name):
    return name if d in ("", ".") else (d.rstrip("/") + "/" + name)


def fs_free_bytes(path):
    try:
        st = os.statvfs(path)
        return st[0] * st[4]
    except (OSError, AttributeError):
        return None


def makedirs(path):
    cur = "/" if path.startswith("/") else ""
    for part in path.split("/"):
        if not part:
            continue
        cur = path_join(cur, part) if cur != "/" else "/" + part
        try:
            os.mkdir(cur)
        except OSError as e:
            if e.args[0] != _EEXIST:
                raise
            if not os.stat(cur)[0] & 0x4000:
                raise DevError(_E_EXISTS, "%s exists and is not a directory" % cur)


def replace_file(src, dst):
    try:
        os.rename(src, dst)       # littlefs replaces dst atomically
    except OSError as e:
        if e.args[0] != _EEXIST:  # FAT refuses to rename over a file
            raise
        os.remove(dst)
        os.rename(src, dst)


FILE_COMMANDS = {_LIST: cmd_list, _HASH: cmd_hash, _REMOVE: cmd_remove, _RENAME: cmd_rename, _MKDIR: cmd_mkdir,
                 _PUT_BEGIN: cmd_put_begin, _PUT_DATA: cmd_put_data, _PUT_END: cmd_put_end,
                 _PUT_ABORT: cmd_put_abort, _GET: cmd_get}

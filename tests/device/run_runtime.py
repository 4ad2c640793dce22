# Runs the tinyfw runtime under the MicroPython unix VM on this process's stdin/stdout, as on a flashed board:
# the firmware files are copied into a littlefs filesystem in RAM, which is then mounted at "/" in place of the
# host's files, and the runtime is imported from there. For tests/test_runtime*.py.
#   micropython run_runtime.py DEVICE_DIR FS_BLOCKS MAX_PAYLOAD WINDOW FILE,FILE,...   (0 = runtime's default)
import os
import sys
import vfs

BLOCK_BYTES = 4096


class RamBlocks:
    def __init__(self, count):
        self.data = bytearray(BLOCK_BYTES * count)
        self.count = count

    def readblocks(self, block, buf, offset=0):
        start = block * BLOCK_BYTES + offset
        buf[:] = memoryview(self.data)[start:start + len(buf)]

    def writeblocks(self, block, buf, offset=None):
        start = block * BLOCK_BYTES + (offset or 0)
        self.data[start:start + len(buf)] = buf

    def ioctl(self, op, arg):
        if op == 4:
            return self.count
        if op == 5:
            return BLOCK_BYTES
        if op == 6:
            return 0


device_dir, fs_blocks, max_payload, window, names = sys.argv[1:6]
blocks = RamBlocks(int(fs_blocks))
vfs.VfsLfs2.mkfs(blocks)
fs = vfs.VfsLfs2(blocks)
vfs.mount(fs, "/flash")
os.mkdir("/flash/tinyfw")
for name in names.split(","):
    with open(device_dir + "/tinyfw/" + name, "rb") as src, open("/flash/tinyfw/" + name, "wb") as dst:
        dst.write(src.read())
vfs.umount("/flash")
vfs.umount("/")
vfs.mount(fs, "/")
sys.path[:] = ["", "/lib"]      # modules come from the RAM filesystem from here on, as on a board
import tinyfw.runtime  # noqa: E402

tinyfw.runtime.run(max_payload=int(max_payload) or None, window=int(window) or None)

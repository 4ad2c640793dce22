# A DUT that speaks only the MLPerf Tiny / EEMBC text protocol (tinyfw.eembc), on the REPL's stdin/stdout:
#   import tinyfw.eembc_dut as d; d.serve()
# It loads the boot model (tinyfw.boot_model: /boot_model names it, else /model.tflite) on the first
# command that needs a model. The tinyfw runtime answers the same commands between its binary frames without this
# module.

from tinyfw.eembc import handle_command


class StandaloneRuntime:
    """The smallest `rt` for serve(): a model from tinyfw.engine and text to stdout."""

    def __init__(self, out=None):
        import sys

        self.model = None
        self._out = out or sys.stdout

    def load_model(self, path, backend="auto"):
        from tinyfw import engine

        if self.model is not None:
            self.model.close()
            self.model = None
        self.model = engine.load(path, backend=backend)
        import sys
        from tinyfw.cmd_load import board_time
        board_time(path)                  # the virtual board's clock: this model's board time, if known
        sys.modules.pop("tinyfw.cmd_load", None)
        return self.model

    def write_text(self, s):
        self._out.write(s)
        try:
            self._out.flush()
        except AttributeError:
            pass


def serve(rt=None, read=None, max_command=512):
    """Run a DUT that speaks only this protocol: read bytes, dispatch each '%'-terminated command, forever.

    ``read()`` returns one byte (bytes/str of length 1, empty at end of input); default: stdin.
    """
    import sys

    if rt is None:
        rt = StandaloneRuntime()
    if read is None:
        stream = getattr(sys.stdin, "buffer", sys.stdin)

        def read():
            return stream.read(1)

    cmd = bytearray(max_command)
    n = 0
    rt.write_text("m-init-done\r\nm-ready\r\n")
    while True:
        c = read()
        if not c:
            return
        b = c[0] if not isinstance(c, str) else ord(c)
        if b == 0x25:          # '%'
            handle_command(bytes(cmd[:n]).decode(), rt)
            n = 0
        elif b in (0x0A, 0x0D):
            continue
        elif n < max_command:
            cmd[n] = b
            n += 1

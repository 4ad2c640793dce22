# tinyfw.offload.stream: offload frames over the board's serial console, relayed by the host (tinyhost offload
# relay, or the runtime's host client) for boards without Wi-Fi. Imported by the Predictor only for transport
# "serial". Reads are polled with a timeout; Ctrl-C is off while a frame is in flight.
import select
import sys
from time import ticks_add, ticks_diff, ticks_ms


class StreamLink:
    def __init__(self, timeout_ms, stream_in=None, stream_out=None):
        self.stream_in = stream_in or sys.stdin.buffer
        self.stream_out = stream_out or sys.stdout.buffer
        self.poll = select.poll()
        self.poll.register(stream_in or sys.stdin, select.POLLIN)
        self.timeout_ms = timeout_ms
        self.nodelay = False
        self.one = bytearray(1)

    def open(self):
        pass

    def send(self, mv):
        self.stream_out.write(mv)
        try:
            self.stream_out.flush()
        except AttributeError:
            pass

    def recv_into(self, mv):
        try:
            import micropython
            micropython.kbd_intr(-1)
        except (ImportError, AttributeError):
            micropython = None
        try:
            deadline = ticks_add(ticks_ms(), self.timeout_ms)
            for i in range(len(mv)):
                left = ticks_diff(deadline, ticks_ms())
                if left <= 0 or not self.poll.poll(left):
                    raise OSError(110)
                if self.stream_in.readinto(self.one) != 1:
                    raise OSError(104)
                mv[i] = self.one[0]
        finally:
            if micropython is not None:
                micropython.kbd_intr(3)

    def close(self):
        pass

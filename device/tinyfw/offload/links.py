# tinyfw.offload.links: how offload frames travel. TcpLink: a persistent socket (ESP32 Wi-Fi; the virtual board's
# real loopback socket). StreamLink: the serial console, relayed by the host (boards without Wi-Fi).
try:
    from time import ticks_ms, ticks_diff, ticks_add
except ImportError:
    from time import monotonic as _mono

    def ticks_ms():
        return int(_mono() * 1000)

    def ticks_diff(a, b):
        return a - b

    def ticks_add(a, b):
        return a + b


class TcpLink:
    # A persistent TCP connection with TCP_NODELAY (where the port has it) and a timeout on every operation.
    def __init__(self, server, timeout_ms):
        host, port = server.rsplit(":", 1)
        self.host, self.port = host.strip("[]"), int(port)
        self.timeout_ms = timeout_ms
        self.sock = None
        self.nodelay = False

    def open(self):
        import socket
        addr = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)[0][-1]
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(self.timeout_ms / 1000)
            s.connect(addr)
            try:
                s.setsockopt(getattr(socket, "IPPROTO_TCP", 6), getattr(socket, "TCP_NODELAY", 1), 1)
                self.nodelay = True
            except (OSError, AttributeError):
                self.nodelay = False
        except BaseException:
            s.close()
            raise
        self.sock = s

    def is_open(self):
        return self.sock is not None

    def send(self, mv):
        s = self.sock
        sent = 0
        n = len(mv)
        while sent < n:             # bounded: each send either progresses or raises (timeout)
            k = s.send(mv[sent:])
            if not k:
                raise OSError(104)
            sent += k

    def recv_into(self, mv):
        s = self.sock
        got = 0
        n = len(mv)
        while got < n:
            k = s.readinto(mv[got:])
            if not k:
                raise OSError(104)   # closed by the server
            got += k

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


class StreamLink:
    # Offload frames over the board's serial console, relayed by the host (tinyhost offload relay, or the
    # runtime's host client). Reads are polled with a timeout; Ctrl-C is off while a frame is in flight.
    def __init__(self, timeout_ms, stream_in=None, stream_out=None):
        import sys
        import select
        self.stream_in = stream_in or sys.stdin.buffer
        self.stream_out = stream_out or sys.stdout.buffer
        self.poll = select.poll()
        self.poll.register(stream_in or sys.stdin, select.POLLIN)
        self.timeout_ms = timeout_ms
        self.nodelay = False
        self.one = bytearray(1)
        self.opened = False

    def open(self):
        self.opened = True

    def is_open(self):
        return self.opened

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
        self.opened = False



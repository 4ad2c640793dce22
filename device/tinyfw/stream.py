# Continuous audio in, keyword detections out, on the board (docs/streaming.md).
#
# Audio (16 kHz int16) goes into a ring buffer as it arrives: over the serial link (AUDIO frames, tinyfw.cmd_stream),
# or from the board's microphone (machine.I2S; a stand-in on the virtual board). Every hop of 320 samples (20 ms) the
# front end (tinyfw.mfcc) computes the newest feature frame from the last window of samples into a ring of 49
# frames (the model's 1 s window); every `infer_every` hops the window is copied into the model's input, the model
# runs, its posteriors are averaged over the last `smooth` inferences, and the best keyword class whose average
# reaches `threshold` (out of 255) is a detection, unless one came less than `refractory_ms` earlier. Nothing is
# allocated per hop: every buffer is made in Listener.__init__.
#
# Real time (docs/streaming.md): hop k's samples are there at arrive(k); the board idles until then and is busy
# for the front end's and the model's time (tinyfw.clock: board time on the virtual board, the real clock on a
# board). The ring holds the front end's window and the hop arriving; audio that comes while the board is busy
# waits outside it, for at most `backlog_hops` hops (the I2S driver's DMA buffer on a board with a microphone; the
# host, which waits for each AUDIO reply, on the serial link). When the board is still busy more than a hop after
# a hop arrived, the inference due then is skipped (counted); when it is further behind than the backlog holds,
# the hop's samples were lost: the hop is dropped (counted; its feature frame repeats the previous one).
import array

from tinyfw import clock

try:
    import micropython
    from micropython import const
except ImportError:                         # CPython (host-side tests)
    micropython = None

    def const(x):
        return x

HOP_SAMPLES = const(320)          # 20 ms at 16 kHz
RATE_HZ = const(16000)
HOP_NS = const(20000000)
EVENT_BYTES = const(10)           # board ms u32, audio ms u32, class u8, score u8
_EVENTS = const(32)               # detections kept until the host takes them
BUSY_MAX = const(8)               # busy intervals kept until the host takes them (the hops of an AUDIO frame)
BUSY_BYTES = const(8)             # start u32, end u32: board time since the stream started, in 10 us units
_FRAME_OVERHEAD = const(14)       # bytes of a frame besides its payload (docs/protocol.md)

# Listener.counts, in this order (STREAM_STOP reports them by these names)
COUNT_NAMES = ("hops", "inferences", "inferences_skipped", "hops_dropped", "detections", "events_lost",
               "busy_us", "elapsed_us", "lag_max_us", "samples")
_HOPS = const(0)
_INFERENCES = const(1)
_SKIPPED = const(2)
_DROPPED = const(3)
_DETECTIONS = const(4)
_EVENTS_LOST = const(5)
_BUSY_US = const(6)
_ELAPSED_US = const(7)
_LAG_MAX_US = const(8)
_SAMPLES = const(9)


if micropython is not None:
    @micropython.viper
    def _copy(dst: ptr8, d: int, src: ptr8, s: int, n: int):
        i = 0
        while i < n:
            dst[d + i] = src[s + i]
            i += 1

    @micropython.viper
    def _posterior(dst: ptr8, d: int, out: ptr8, n: int, zp: int, signed: int):
        # output q (int8 or uint8) -> q - zero point, clipped to 0..255 (softmax with scale 1/256)
        i = 0
        while i < n:
            q = out[i]
            if signed and q > 127:
                q -= 256
            q -= zp
            if q < 0:
                q = 0
            if q > 255:
                q = 255
            dst[d + i] = q
            i += 1
else:
    def _copy(dst, d, src, s, n):
        memoryview(dst).cast("B")[d:d + n] = bytes(memoryview(src).cast("B")[s:s + n])

    def _posterior(dst, d, out, n, zp, signed):
        for i in range(n):
            q = out[i]
            if signed and q > 127:
                q -= 256
            q -= zp
            dst[d + i] = 0 if q < 0 else 255 if q > 255 else q


def infer_every_for(invoke_ns, hop_ns):
    """The fewest hops between inferences with which front end + inference fit in the audio's time:
    s * HOP_NS >= s * hop_ns + invoke_ns; 0 when even the front end alone takes longer than a hop."""
    if hop_ns >= HOP_NS:
        return 0
    return max(1, -(-invoke_ns // (HOP_NS - hop_ns)))


class Listener:
    """The streaming pipeline over one loaded model (49 x 10 int8 input) and one front end."""

    def __init__(self, model, frontend, infer_every=1, smooth=1, threshold=200, refractory_ms=1000,
                 classes=0xFFFFFFFF, backlog_hops=2, window_samples=640, baud=0):
        # the buffers first, largest first, while the heap's free blocks are largest (the ring is the one > 1 KB)
        ring = array.array("h", range(window_samples))  # allocated once at its size (no bytes as large)
        for i in range(window_samples):
            ring[i] = 0
        info = model.inputs[0]
        out = model.outputs[0]
        feat = bytearray(info.nbytes)
        ev = bytearray(_EVENTS * EVENT_BYTES)
        self.model = model
        self.fe = frontend
        # The instance's attributes stay at 29 or fewer: MicroPython sizes an object's attribute table in steps
        # (17, 29, 53 slots of 16 bytes in the 64-bit VM); the 30th would cost 384 bytes more, in one block.
        self.frames = info.nbytes // frontend.mfcc_count  # feature frames (mfcc_count bytes) in the model's input
        self.out_zp = out.zero_point
        self.out_signed = 1 if out.dtype == "int8" else 0
        self.infer_every = max(1, infer_every)
        self.smooth = max(1, smooth)
        self.threshold = threshold
        self.refractory_ns = refractory_ms * 1000000
        self.classes = classes
        self.window = window_samples
        self.ring = ring        # the window: a hop is taken as soon as it has arrived, so the window is all it needs
        self.feat = feat
        self.post = bytearray(self.smooth * out.nbytes)
        self.sums = [0] * out.nbytes                     # a class each
        self.ev = ev
        self.ev_n = 0
        # when the board was busy with each hop (its duty-cycle pin high), for the host: start and end in 10 us
        # units since the stream started, the oldest first; the hops after the first BUSY_MAX untaken are not kept
        self.busy = array.array("i", range(2 * BUSY_MAX))
        self.busy_n = 0
        self.counts = [0] * len(COUNT_NAMES)
        # where the next byte goes in the ring, bytes of the hop arriving, the next posterior's slot, hops since
        # the last inference
        self.w = 0
        self.fill = 0
        self.post_i = 0
        self.since = 0
        self.last_det_ns = -self.refractory_ns
        self.virtual = clock.model() != ""
        # the virtual board's line: a byte takes 10 bits (8N1) at its baud; audio frames arrive when their last
        # byte has crossed it
        self.bit_ns = 1000000000 // baud if (baud and self.virtual) else 0
        self.line_ns = 0
        self.avail_ns = 0           # when the samples fed so far had all arrived (board time since start)
        self.t0_ns = clock.now_us() * 1000
        self.backlog_hops = backlog_hops

    def release(self):
        """Give the buffers and the front end back to the heap (the stream has ended); the counters and settings
        stay for its report."""
        self.ring = self.feat = self.post = self.sums = self.ev = self.busy = self.fe = self.model = None

    # -- audio in -----------------------------------------------------------------------------------------------
    def feed(self, buf, off, n):
        """Take n bytes (int16 little-endian samples) from buf[off:]: into the ring, a hop at a time through the
        pipeline. A frame's bytes have all arrived when its last byte has (the virtual board's line)."""
        if self.bit_ns:
            self.line_ns += (n + _FRAME_OVERHEAD) * 10 * self.bit_ns
            self.avail_ns = self.line_ns
        rb = 2 * len(self.ring)
        hop_bytes = 2 * HOP_SAMPLES
        while n > 0:
            w = self.w
            take = rb - w                                 # up to the end of the ring
            to_hop = hop_bytes - self.fill                # up to the end of this hop
            if take > to_hop:
                take = to_hop
            if take > n:
                take = n
            _copy(self.ring, w, buf, off, take)
            off += take
            n -= take
            self.w = (w + take) % rb
            self.fill += take
            if self.fill == hop_bytes:
                self.fill = 0
                self.hop()

    def hop(self):
        """One hop of audio has arrived: its feature frame, and an inference when one is due."""
        c = self.counts
        k = c[_HOPS]
        c[_HOPS] = k + 1
        c[_SAMPLES] += HOP_SAMPLES
        now = clock.now_us() * 1000
        if self.virtual:
            arrive = self.t0_ns + (k + 1) * HOP_NS
            if self.t0_ns + self.avail_ns > arrive:       # the line is slower than the audio
                arrive = self.t0_ns + self.avail_ns
            clock.wait_until_us(arrive // 1000)
            now = clock.now_us() * 1000
        else:
            arrive = now                                  # it is here now: the real clock
        lag = now - arrive
        if lag // 1000 > c[_LAG_MAX_US]:
            c[_LAG_MAX_US] = lag // 1000
        rb = self.fe.mfcc_count
        row = (k % self.frames) * rb
        if lag > self.backlog_hops * HOP_NS:
            # this hop's samples were lost while the board was busy: repeat the last frame
            c[_DROPPED] += 1
            prev = ((k - 1) % self.frames) * rb
            _copy(self.feat, row, self.feat, prev, rb)
        else:
            ring = self.ring
            start = (self.w // 2 - self.window) % len(ring)
            self.fe.frame(ring, start, self.feat, row)
            clock.hops(1)
        self.since += 1
        if k + 1 >= self.frames and self.since >= self.infer_every:
            self.since = 0
            t = clock.now_us() * 1000
            if t - arrive > HOP_NS:
                c[_SKIPPED] += 1                          # behind by more than a hop: the front end goes first
            else:
                self._infer(k, arrive)
        end = clock.now_us() * 1000
        c[_BUSY_US] += (end - now) // 1000
        c[_ELAPSED_US] = (end - self.t0_ns) // 1000
        i = self.busy_n
        if i < BUSY_MAX:
            self.busy[2 * i] = (now - self.t0_ns) // 10000
            self.busy[2 * i + 1] = (end - self.t0_ns) // 10000
            self.busy_n = i + 1

    def _infer(self, k, arrive):
        m = self.model
        inp = m.input_buffer(0)
        rows = self.frames
        rb = self.fe.mfcc_count
        oldest = ((k + 1) % rows) * rb                   # the window, oldest frame first
        head = rows * rb - oldest
        _copy(inp, 0, self.feat, oldest, head)
        _copy(inp, head, self.feat, 0, oldest)
        m.invoke()
        clock.invoked(1)
        self.counts[_INFERENCES] += 1
        nc = len(self.sums)
        pi = self.post_i
        _posterior(self.post, pi * nc, m.output_buffer(0), nc, self.out_zp, self.out_signed)
        self.post_i = (pi + 1) % self.smooth
        post = self.post
        sums = self.sums
        best = -1
        best_sum = -1
        for c in range(nc):
            s = 0
            for j in range(self.smooth):
                s += post[j * nc + c]
            sums[c] = s
            if (self.classes >> c) & 1 and s > best_sum:
                best, best_sum = c, s
        score = best_sum // self.smooth
        if best < 0 or score < self.threshold:
            return
        t = clock.now_us() * 1000
        if t - self.last_det_ns < self.refractory_ns:
            return
        self.last_det_ns = t
        self.counts[_DETECTIONS] += 1
        self._event(t - self.t0_ns, (k + 1) * (HOP_NS // 1000000), best, score)

    def _event(self, t_ns, audio_ms, cls, score):
        if self.ev_n >= _EVENTS:
            self.counts[_EVENTS_LOST] += 1
            return
        ev = self.ev
        i = self.ev_n * EVENT_BYTES
        ms = t_ns // 1000000
        for b in range(4):
            ev[i + b] = (ms >> (8 * b)) & 0xFF
            ev[i + 4 + b] = (audio_ms >> (8 * b)) & 0xFF
        ev[i + 8] = cls
        ev[i + 9] = score
        self.ev_n += 1

    def take_busy(self, dst, off):
        """Move the busy intervals kept into dst[off:] (BUSY_BYTES each: start u32, end u32); returns how many."""
        n = self.busy_n
        b = self.busy
        for i in range(2 * n):
            v = b[i]
            at = off + 4 * i
            dst[at] = v & 0xFF
            dst[at + 1] = (v >> 8) & 0xFF
            dst[at + 2] = (v >> 16) & 0xFF
            dst[at + 3] = (v >> 24) & 0xFF
        self.busy_n = 0
        return n

    def take_events(self, dst, off, most):
        """Move up to ``most`` pending detections (EVENT_BYTES each) into dst[off:]; returns how many."""
        n = self.ev_n if self.ev_n < most else most
        if n:
            _copy(dst, off, self.ev, 0, n * EVENT_BYTES)
            rest = (self.ev_n - n) * EVENT_BYTES
            _copy(self.ev, 0, self.ev, n * EVENT_BYTES, rest)
            self.ev_n -= n
        return n

# tinyfw microphone source for the stream (docs/streaming.md): machine.I2S on a board, a stand-in on the virtual
# board that plays /mic.pcm (int16 little-endian, 16 kHz, put there by the host) through the same readinto() calls.
#
# STREAM_START with the microphone source names the peripheral and pins as text, "id sck ws sd bits" (the board
# profile's [mic], tinyhost.mic); run() reads a hop at a time for the seconds asked, feeds the Listener, sends each
# detection as an EVENT frame at once (index: class << 8 | score, value: board ms), and stops early when the host
# sends anything (looked at once a second). Nothing is allocated per hop.
from tinyfw import clock, stream

PCM_FILE = "/mic.pcm"
RATE_HZ = 16000


def i2s_args(text, ibuf):
    """(id, keyword arguments) of machine.I2S for the text "id sck ws sd bits": receive, mono, 16 kHz, ``ibuf``
    bytes of DMA buffer (the audio waiting while the board is busy); pins are numbers until make() wraps them."""
    parts = [int(x) for x in text.split()]
    if len(parts) != 5 or parts[4] not in (16, 32):
        raise ValueError("microphone settings are 'id sck ws sd bits' (bits 16 or 32), got %r" % text)
    i2s_id, sck, ws, sd, bits = parts
    return i2s_id, {"sck": sck, "ws": ws, "sd": sd, "bits": bits, "rate": RATE_HZ, "ibuf": ibuf}


class StandInI2S:
    """machine.I2S's readinto() over /mic.pcm, for the virtual board (which has no microphone): 16-bit slots."""

    def __init__(self, path=PCM_FILE):
        self.f = open(path, "rb")

    def readinto(self, buf):
        n = self.f.readinto(buf)
        return n or 0

    def deinit(self):
        self.f.close()


def make(text, ibuf):
    """The I2S receiver: machine.I2S on a board; StandInI2S on the virtual board. Returns (i2s, bits)."""
    i2s_id, kw = i2s_args(text, ibuf)
    if clock.virtual():
        return StandInI2S(), 16
    from machine import I2S, Pin
    bits = kw["bits"]
    i2s = I2S(i2s_id, sck=Pin(kw["sck"]), ws=Pin(kw["ws"]), sd=Pin(kw["sd"]), mode=I2S.RX, bits=bits,
              format=I2S.MONO, rate=kw["rate"], ibuf=kw["ibuf"])
    return i2s, bits


def _to16(buf, n):
    """32-bit slots (the sample in the upper bits, as an INMP441 sends it) -> int16 in place; returns the bytes."""
    j = 0
    for i in range(0, n, 4):
        buf[j] = buf[i + 2]
        buf[j + 1] = buf[i + 3]
        j += 2
    return j


def _host_wants_end(fio, poll, one):
    """Whether the host sent a byte to end the listening; the zero bytes that pad each of its frames (the one that
    started the listening among them) are read away and do not count."""
    while poll.poll(0):
        if fio.inp.readinto(one) != 1 or one[0]:
            return True
    return False


def run(rt, li, text, seconds):
    """Listen for ``seconds`` of audio (or until the host sends a byte); then answer with the counters."""
    from tinyfw import cmd_stream

    ibuf = (li.backlog_hops + 1) * stream.HOP_SAMPLES * 4
    i2s, bits = make(text, ibuf)
    hop_bytes = stream.HOP_SAMPLES * (4 if bits == 32 else 2)
    buf = bytearray(hop_bytes)
    ev = bytearray(stream.EVENT_BYTES)
    one = bytearray(1)
    poll = rt.fio.poll
    hops = int(seconds * RATE_HZ) // stream.HOP_SAMPLES
    k = 0
    try:
        for _ in range(hops):
            n = i2s.readinto(buf)
            if n <= 0:
                break
            if bits == 32:
                n = _to16(buf, n)
            li.feed(buf, 0, n)
            while cmd_stream.take(li, ev, 0, 1):
                rt.send_event(ev[8] << 8 | ev[9], ev[0] | ev[1] << 8 | ev[2] << 16 | ev[3] << 24)
            k += 1
            if poll is not None and k % 50 == 0 and _host_wants_end(rt.fio, poll, one):    # looked at once a second
                break
    finally:
        i2s.deinit()
    buf = ev = one = None
    cmd_stream.counters(rt, cmd_stream.stop())

"""``tinyhost listen --mic``: the board's own microphone (machine.I2S) feeds its keyword spotting (docs/streaming.md).

The board profile's ``[mic]`` names the I2S peripheral, its pins and the sample slot; :func:`mic_settings` turns it
into the text STREAM_START carries, from which the firmware (``tinyfw.mic``) constructs ``machine.I2S``. A PDM
microphone (the Nano 33 BLE Sense's) is refused: stock MicroPython's nrf port cannot read it. On a virtual board a
stand-in replaces machine.I2S and plays a WAV the host puts on the board's flash, in board time.
"""

from . import protocol as P
from . import stream as st
from .errors import UsageError

PCM_FILE = "/mic.pcm"               # device/tinyfw/mic.py's PCM_FILE (tests/test_stream.py checks the copy)


def mic_settings(profile):
    """The text "id sck ws sd bits" for ``profile``'s I2S microphone; UsageError when it has none that MicroPython
    can read."""
    mic = profile.mic
    if mic is None:
        raise UsageError(f"board profile {profile.name} names no microphone",
                         hint="add a [mic] table to its boards/*.toml (docs/streaming.md), or stream a file with --wav")
    if mic.kind != "i2s":
        raise UsageError(f"the {profile.name}'s microphone is a {mic.kind.upper()} one: {mic.note or 'not readable'}",
                         hint="stream audio over the serial link instead: tinyhost listen --wav FILE")
    return f"{mic.i2s_id} {mic.sck} {mic.ws} {mic.sd} {mic.bits}"


def listen(board, model_path, seconds, options, on_detection=None, wav_path=None):
    """Listen with the board's microphone for ``seconds``; on a virtual board ``wav_path`` is what its stand-in
    microphone hears. Returns a :class:`tinyhost.stream.StreamResult`."""
    from .features.mfcc import read_wav

    options.check()
    text = mic_settings(board.profile)
    if seconds <= 0:
        raise UsageError("--seconds must be positive")
    board.flash([model_path])
    if board.virtual:
        if not wav_path:
            raise UsageError("a virtual board has no microphone: its stand-in plays a WAV file",
                             hint="tinyhost listen --board sim --mic --wav FILE")
        pcm = st.to_int16(read_wav(wav_path, st.RATE_HZ))
        board.open().put_file(pcm, PCM_FILE)
        seconds = min(seconds, len(pcm) / 2 / st.RATE_HZ)
    board.load(model_path, keep_free_bytes=st.STREAM_KEEP_FREE_BYTES)     # the stream's heap left free
    labels = st.labels_for(model_path)
    detections = []

    def on_event(index, board_ms):
        cls, score = index >> 8, index & 0xFF
        d = st.Detection(board_ms / 1000, board_ms / 1000, cls, labels[cls] if cls < len(labels) else str(cls),
                         score / 255)
        detections.append(d)
        if on_detection:
            on_detection(d)

    options = st.front_end_for(model_path, options)
    payload = P.pack_stream_start(options.infer_every, options.smooth, round(options.threshold * 255),
                                  options.refractory_ms, P.STREAM_SOURCE_MIC, options.classes_mask(),
                                  options.backlog_hops, int(seconds) or 1, mic=text,
                                  window_samples=options.window_samples, fft_size=options.fft_size)
    # a virtual board runs slower than real time; a real one takes the seconds asked
    f = board.dev.link.request(P.T.STREAM_START, payload, on_event=on_event, what="listen",
                               timeout_s=30.0 + (20.0 if board.virtual else 1.0) * seconds, expect_bytes=1024)
    counters = {k: (int(v) if v.lstrip("-").isdigit() else v) for k, v in P.parse_kv(f.payload).items()}
    return st.StreamResult(detections, counters.get("samples", 0) / st.RATE_HZ, counters,
                           str(counters.get("clock", "real")), board.virtual, board.provenance.board, board.baud, 0,
                           labels)

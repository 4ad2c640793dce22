# tinyfw offload switching (docs/offload.md): reads /offload.json and builds or drops tinyfw.offload's Predictor
# for the loaded model; packs INFER's FLAG_INFO record. tinyfw.inference imports this module only while the
# config file exists or a FLAG_INFO request comes, so a board that never offloads keeps its ~5 KB of code free.
import gc
import struct
import time

OFFLOAD_CONFIG = "/offload.json"
INFO_BYTES = 56                # source u8, flags u8, error i16, retries u8, mode u8, 2 spare, confidence f32, 11 x u32
_INFO_FMT = "<BBhBBxxf11I"
_SOURCES = {"local": 0, "model": 1, "reference": 2}
_MODES = {"off": 0, "on": 1, "auto": 2}
_CHECK_MS = 1000               # how often the config file is looked at when it does not say otherwise


class _Offload:
    # The runtime's offload state (rt.offload_state, so it goes with the runtime): the config file's bytes as last
    # read, and the Predictor while it is on/auto.
    def __init__(self):
        self.predictor = None
        self.raw = None
        self.mode = "off"
        self.error = ""
        self.checked_ms = 0
        self.check_ms = _CHECK_MS


def _state(rt):
    st = getattr(rt, "offload_state", None)
    if st is None:
        st = rt.offload_state = _Offload()
    return st


def release(rt):
    """The model goes away: drop the Predictor and tinyfw.offload's code; the next load reads the config again."""
    st = _state(rt)
    _offload_close(st, forget=True)
    st.raw = None
    st.mode = "off"


def mode_error(rt):
    """(mode in use, error text or "")."""
    st = _state(rt)
    return st.mode, st.error


def _offload_close(st, forget=False):
    p = st.predictor
    st.predictor = None
    if p is not None:
        p.close()
    if forget:
        _forget_package()


def _forget_package():
    # Give tinyfw.offload's code back to the heap too; a later load imports it again when the config asks for it.
    import sys
    for name in ("tinyfw.offload", "tinyfw.offload.frames", "tinyfw.offload.links"):
        if name in sys.modules:
            del sys.modules[name]
    import tinyfw
    if hasattr(tinyfw, "offload"):
        del tinyfw.offload


def offload_check(rt, force=False):
    """Re-read /offload.json when it changed (at most every config_check_ms unless ``force``); builds or drops the
    Predictor for the loaded model. A bad file is noted (``offload_status``) and the board runs locally."""
    st = _state(rt)
    now = time.ticks_ms()
    if not force and time.ticks_diff(now, st.checked_ms) < st.check_ms:
        return st.predictor
    st.checked_ms = now
    try:
        with open(OFFLOAD_CONFIG, "rb") as f:
            raw = f.read()
    except OSError:
        raw = b""
    if raw == st.raw and not force:
        return st.predictor
    st.raw = raw
    _offload_close(st)
    st.mode = "off"
    st.error = ""
    st.check_ms = _CHECK_MS
    if not raw:
        return None
    try:
        import json
        cfg = json.loads(raw)
        mode = cfg.get("mode", "off")
        st.check_ms = int(cfg.get("config_check_ms", _CHECK_MS))
    except (ValueError, AttributeError, TypeError) as e:
        st.error = "%s: %s" % (OFFLOAD_CONFIG, e)
        return None
    if mode == "off":
        _forget_package()
        return None
    if rt.model is None:                       # a model load checks again (force)
        return None
    gc.collect()
    try:
        from tinyfw.offload import Predictor
        st.predictor = Predictor(rt.model, config=cfg)
        st.mode = mode
    except ImportError as e:
        st.error = "tinyfw.offload is not on the board: %s" % e
    except (ValueError, TypeError, KeyError) as e:
        st.error = "%s: %s" % (OFFLOAD_CONFIG, e)
    except MemoryError:
        st.predictor = None            # tinyfw.inference frees the rest and reports "out of memory: N bytes free"
        raise
    return st.predictor


def offload_status(rt):
    """(mode in use, error text or "", the Predictor's counters or None)."""
    st = _state(rt)
    p = st.predictor
    return st.mode, st.error, (p.counters() if p is not None else None)



def pack_info(buf, at, info, dt, mode):
    if info is None:
        struct.pack_into(_INFO_FMT, buf, at, 0, 0, 0, 0, 0, float("nan"), dt, 0, 0, 0, 0, 0, 0, 0, dt, 0, 0)
        return
    flags = (1 if info.offloaded else 0) | (2 if info.fallback else 0) | 4
    conf = info.confidence
    struct.pack_into(_INFO_FMT, buf, at, _SOURCES.get(info.source, 0), flags, info.error, min(info.retries, 255),
                     _MODES.get(mode, 0), float("nan") if conf is None else conf, info.local_us,
                     info.serialise_us, info.send_us, info.wait_us, info.receive_us, info.parse_us,
                     info.server_queue_us, info.server_compute_us, info.total_us, info.request_bytes,
                     info.reply_bytes)

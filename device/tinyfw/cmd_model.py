# tinyfw model commands: SET_INPUT, INVOKE, GET_OUTPUT, INFER, UNLOAD and the end of LOAD (docs/protocol.md).
#
# The runtime imports this module on the first model command; a load drops it and imports it again after the
# model (tinyfw.cmd_load, which holds the loading code for that one command). It drives the engine's Model
# through the engine contract (inputs/outputs, input_buffer, invoke, output_buffer, stats, close) and never
# depends on how the engine works inside.
#
# Offload (docs/offload.md): when /offload.json says "on" or "auto", INFER goes through tinyfw.offload's
# Predictor (same input, same output layout) instead of a plain invoke; the package is imported only then, after
# the model (when it does not fit next to it, the board runs locally and LOAD says why). The file is read when a
# model is loaded and looked at again at most every config_check_ms, so `tinyhost offload ...` switches a running
# board and the setting survives a reset. A request with FLAG_INFO gets the record of which path answered and how
# long each stage took, between the time and the output.
import gc
import json
import struct
import time

from micropython import const

from tinyfw.frame import DevError, put32, u16, u32

# The numbers of docs/protocol.md (as in tinyfw.frame and tinyhost.protocol), private so that they cost no RAM.
_HEADER_BYTES = const(10)
_FLAG_STREAM = const(2)
_SET_INPUT = const(0x21)
_INVOKE = const(0x22)
_GET_OUTPUT = const(0x23)
_INFER = const(0x24)
_UNLOAD = const(0x25)
_E_BAD_ARGS = const(2)
_E_NO_MODEL = const(8)
_E_NO_MEMORY = const(10)
_E_TOO_BIG = const(13)
_E_INTERNAL = const(14)

_OFFLOAD_CONFIG = "/offload.json"
_FLAG_INFO = const(0x04)       # INFER request flag: the reply carries the info block
_INFO_BYTES = const(56)
_INFO_LOCAL = "<8xfI28x3I"     # the info block of a local answer: zeros, confidence nan, local_us, total_us
_predictor = None              # tinyfw.offload's Predictor while /offload.json says on/auto and it fits
_config = None                 # the config file's bytes as last read (b"": no file)
_why = ""                      # why the board runs locally although the file asks for offload
_looked_ms = 0
_check_ms = 1000


def _offload(rt, force=False):
    """The offload Predictor for INFER, or None to run locally. /offload.json is looked at at most every
    config_check_ms (always when ``force``: a model load); when its bytes change the Predictor is rebuilt."""
    global _predictor, _config, _why, _looked_ms, _check_ms
    now = time.ticks_ms()
    if not force and time.ticks_diff(now, _looked_ms) < _check_ms:
        return _predictor
    _looked_ms = now
    try:
        with open(_OFFLOAD_CONFIG, "rb") as f:
            raw = f.read()
    except OSError:
        raw = b""
    if raw == _config and not force:
        return _predictor
    _drop_offload()
    _config = raw
    if not raw or rt.model is None:            # a model load looks again (force)
        return None
    try:                                       # json is built in: "off" imports nothing
        cfg = json.loads(raw)
        _check_ms = int(cfg.get("config_check_ms", 1000))
        if cfg.get("mode", "off") == "off":
            return None
        raw = None
        gc.collect()
        from tinyfw.offload import Predictor
        _predictor = Predictor(rt.model, cfg)
    except ImportError as e:
        _drop_offload()
        _why = "tinyfw.offload is not on the board: %s" % e
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        _drop_offload()
        _why = "%s: %s" % (_OFFLOAD_CONFIG, e)
    except MemoryError:
        _drop_offload()
        _why = "out of memory: %d bytes free" % gc.mem_free()
        rt.last_error = "offload is off: " + _why + " next to the model; it runs locally"   # STATS shows it
    return _predictor


def _drop_offload():
    """Give everything offload allocated back to the heap: the Predictor (its connection) and tinyfw.offload."""
    global _predictor, _why
    import sys
    p = _predictor
    _predictor = None
    _why = ""
    if p is not None:
        p.close()
    p = None
    for name in tuple(sys.modules):
        if name.startswith("tinyfw.offload"):
            del sys.modules[name]
    pkg = sys.modules.get("tinyfw")
    if pkg is not None and "offload" in pkg.__dict__:
        delattr(pkg, "offload")
    gc.collect()


def unload(rt):
    global _config
    _drop_offload()
    _config = None
    rt.input_copies = None
    if rt.model is not None:
        m = rt.model
        rt.model = None
        try:
            m.close()
        finally:
            gc.collect()


def _model(rt):
    if rt.model is None:
        raise DevError(_E_NO_MODEL, "no model loaded: send LOAD first")
    return rt.model


def _tensor_buffer(rt, index, inputs):
    m = _model(rt)
    tensors = m.inputs if inputs else m.outputs
    if index >= len(tensors):
        raise DevError(_E_BAD_ARGS, "the model has %d %s, no index %d"
                       % (len(tensors), "inputs" if inputs else "outputs", index))
    return m.input_buffer(index) if inputs else m.output_buffer(index)


def _set_input(rt):
    if rt.fio.n < 5:
        raise DevError(_E_BAD_ARGS, "SET_INPUT wants index u8, offset u32 and data")
    buf = rt.fio.buf
    index = buf[_HEADER_BYTES]
    offset = u32(buf, _HEADER_BYTES + 1)
    n = rt.fio.n - 5
    dst = _tensor_buffer(rt, index, True)
    if offset + n > len(dst):
        raise DevError(_E_BAD_ARGS, "input %d has %d bytes; %d at offset %d do not fit" % (index, len(dst), n, offset))
    dst[offset:offset + n] = rt.payload_view(5)
    if rt.input_copies is not None:
        rt.input_copies[index][offset:offset + n] = rt.payload_view(5)
    rt.reply_small(0)


def _get_output(rt):
    if rt.fio.n != 7:
        raise DevError(_E_BAD_ARGS, "GET_OUTPUT wants index u8, offset u32, max u16")
    buf = rt.fio.buf
    index = buf[_HEADER_BYTES]
    offset = u32(buf, _HEADER_BYTES + 1)
    want = min(u16(buf, _HEADER_BYTES + 5), rt.max_payload - 4)
    src = _tensor_buffer(rt, index, False)
    total = len(src)
    n = max(0, min(want, total - offset))
    put32(buf, _HEADER_BYTES, total)
    rt.fio.payload[4:4 + n] = src[offset:offset + n]
    rt.reply_big(4 + n)


def _invoke(rt):
    if rt.fio.n != 8:
        raise DevError(_E_BAD_ARGS, "INVOKE wants runs u32, warmup u32")
    buf = rt.fio.buf
    n = u32(buf, _HEADER_BYTES)
    warmup = u32(buf, _HEADER_BYTES + 4)
    stream = rt.fio.flags & _FLAG_STREAM
    m = _model(rt)
    rt.times = None
    gc.collect()
    try:
        times = bytearray(4 * n)
    except MemoryError:
        raise DevError(_E_NO_MEMORY, "%d runs need %d bytes for their timings; ask for fewer runs per INVOKE"
                       % (n, 4 * n))
    invoke = m.invoke
    restore = _restorer(rt, m)
    for _ in range(warmup):
        restore()
        invoke()
    rt.collect()
    ticks_us = time.ticks_us
    ticks_diff = time.ticks_diff
    mem_alloc = gc.mem_alloc
    total = 0
    t_min = 0xFFFFFFFF
    t_max = 0
    alloc = 0
    for i in range(n):
        restore()
        a0 = mem_alloc()
        t0 = ticks_us()
        invoke()
        dt = ticks_diff(ticks_us(), t0)
        a1 = mem_alloc()
        if a1 > a0:
            alloc += a1 - a0
        put32(times, 4 * i, dt)
        if stream:
            rt.send_event(i, dt)
        total += dt
        if dt < t_min:
            t_min = dt
        if dt > t_max:
            t_max = dt
    rt.times = times
    s = rt.small
    put32(s, 0, n)
    put32(s, 4, total & 0xFFFFFFFF)
    put32(s, 8, total >> 32)
    put32(s, 12, t_min if n else 0)
    put32(s, 16, t_max)
    put32(s, 20, alloc)
    rt.reply_small(24)


def _restorer(rt, m):
    """A function that puts the inputs the host set back into the arena (nothing to do without copies)."""
    copies = rt.input_copies
    if copies is None:
        return _nothing
    views = [m.input_buffer(i) for i in range(len(copies))]
    pairs = list(zip(views, copies))

    def restore():
        for view, copy in pairs:
            view[:] = copy
    return restore


def _nothing():
    pass


def _infer(rt):
    m = _model(rt)
    n = rt.fio.n
    dst = m.input_buffer(0)
    if n != len(dst):
        raise DevError(_E_BAD_ARGS, "INFER carries %d bytes but input 0 has %d" % (n, len(dst)))
    out_len = m.outputs[0].nbytes
    want_info = rt.fio.flags & _FLAG_INFO
    head = 5 + _INFO_BYTES if want_info else 4
    if out_len + head > rt.max_payload:
        raise DevError(_E_TOO_BIG, "output 0 has %d bytes, more than one frame; use INVOKE and GET_OUTPUT" % out_len)
    data = rt.payload_view()
    if rt.input_copies is not None:
        rt.input_copies[0][:] = data
    p = _offload(rt)
    if p is None:
        dst[:] = data
        t0 = time.ticks_us()
        m.invoke()
        dt = time.ticks_diff(time.ticks_us(), t0)
        out = m.output_buffer(0)
    else:
        out, info = p.predict(data)          # same input, same output layout, local or remote
        dt = info.total_us
        if len(out) != out_len:
            raise DevError(_E_INTERNAL, "offload answer has %d bytes, output 0 has %d" % (len(out), out_len))
    buf = rt.fio.buf
    put32(buf, _HEADER_BYTES, dt)
    if want_info:
        buf[_HEADER_BYTES + 4] = _INFO_BYTES
        if p is None:
            struct.pack_into(_INFO_LOCAL, buf, _HEADER_BYTES + 5, float("nan"), dt, dt, 0, 0)
        else:
            p.pack_info(buf, _HEADER_BYTES + 5)
    rt.fio.payload[head:head + out_len] = out
    rt.reply_big(head + out_len)


def handle(rt, ftype):
    if ftype == _INFER:
        _infer(rt)
    elif ftype == _SET_INPUT:
        _set_input(rt)
    elif ftype == _INVOKE:
        _invoke(rt)
    elif ftype == _GET_OUTPUT:
        _get_output(rt)
    elif ftype == _UNLOAD:
        unload(rt)
        rt.reply_small(0)
    else:
        raise DevError(_E_BAD_ARGS, "command 0x%02x is not a model command" % ftype)

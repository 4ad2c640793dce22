# tinyfw model commands: LOAD, SET_INPUT, INVOKE, GET_OUTPUT, INFER, UNLOAD (docs/protocol.md).
#
# The runtime imports this module on the first model command. It drives tinyfw.engine through the engine
# contract (engine.load -> Model with inputs/outputs, input_buffer, invoke, output_buffer, stats, close) and
# never depends on how the engine works inside.
#
# Offload (docs/offload.md): when /offload.json says "on" or "auto", INFER goes through tinyfw.offload's
# Predictor (same input, same output layout) instead of a plain invoke; the package is imported only then. The
# file is read when a model is loaded and checked again at most every config_check_ms, so `tinyhost offload ...`
# switches a running board and the setting survives a reset. A request with FLAG_INFO gets the Predictor's record
# of which path answered and how long each stage took, between the time and the output.
import gc
import json
import struct
import time

from tinyfw.frame import (E_BAD_ARGS, E_INTERNAL, E_MODEL, E_NO_ENGINE, E_NO_MEMORY, E_NO_MODEL, E_NOT_FOUND,
                          E_TOO_BIG, FLAG_STREAM, GET_OUTPUT, HEADER_BYTES, INFER, INVOKE, LOAD, SET_INPUT, UNLOAD,
                          put32, u16, u32)

_engine = None

OFFLOAD_CONFIG = "/offload.json"
FLAG_INFO = 0x04               # INFER request flag: the reply carries the info block (tinyfw.offload_switch)
INFO_BYTES = 56
_INFO_LOCAL = "<8xfI28x3I"  # offload_switch's record for a local answer: zeros, confidence nan, local_us, total_us
_CHECK_MS = 1000               # how often the config file is looked for while tinyfw.offload_switch is not loaded
_switch = None                 # tinyfw.offload_switch once imported
_looked_ms = 0
_oom = ""                      # offload did not fit next to the loaded model; not tried again before the next LOAD


def _engine_module(rt):
    global _engine
    if _engine is None:
        try:
            from tinyfw import engine
        except ImportError as e:
            rt.fail(E_NO_ENGINE, "no model engine on this board (tinyfw.engine: %s); run `tinyhost flash`" % e)
        _engine = engine
    return _engine


def backends(rt=None):
    try:
        from tinyfw import engine
    except ImportError:
        return ()
    return tuple(engine.BACKENDS)


def _switch_module():
    global _switch
    if _switch is None:
        from tinyfw import offload_switch
        _switch = offload_switch
    return _switch


def offload_check(rt, force=False):
    """The offload Predictor for INFER, or None to run locally. tinyfw.offload_switch (which reads /offload.json)
    is imported once the file exists; until then the file is looked for at most every _CHECK_MS (always when
    ``force``: a model load)."""
    global _looked_ms
    if _oom and not force:
        return None
    if _switch is None:
        now = time.ticks_ms()
        if not force and time.ticks_diff(now, _looked_ms) < _CHECK_MS:
            return None
        _looked_ms = now
        try:
            with open(OFFLOAD_CONFIG, "rb") as f:
                raw = f.read()
        except OSError:
            return None
        try:                                   # json is built in: "off" costs no switch module on the heap
            if json.loads(raw).get("mode", "off") == "off":
                return None
        except (ValueError, AttributeError):
            pass                               # the switch module reports a bad file
        raw = None
        gc.collect()
    return _switch_module().offload_check(rt, force)


def _mode_error(rt):
    if _oom:
        return "off", _oom
    return _switch.mode_error(rt) if _switch is not None else ("off", "")


def _drop_offload(rt):
    """Give everything offload allocated back to the heap: the Predictor, tinyfw.offload and the switch module."""
    global _switch
    import sys
    if _switch is not None:
        try:
            _switch.release(rt)
        except MemoryError:
            pass
    _switch = None
    rt.offload_state = None
    for name in ("tinyfw.offload_switch", "tinyfw.offload", "tinyfw.offload.frames", "tinyfw.offload.links"):
        if name in sys.modules:
            del sys.modules[name]
    import tinyfw
    for name in ("offload_switch", "offload"):
        if hasattr(tinyfw, name):
            delattr(tinyfw, name)
    gc.collect()


def _offload_after_load(rt):
    """Switch offload on for the model just loaded. The model comes first: when offload does not fit next to it,
    what it allocated is freed, the board runs locally and LOAD reports offload=off with the reason."""
    global _oom
    _oom = ""
    _checked(rt, True)


def _checked(rt, force):
    # offload_check, but a MemoryError (the config switched on while the board runs, or at LOAD) means local runs.
    global _oom
    try:
        return offload_check(rt, force)
    except MemoryError:
        _drop_offload(rt)
        _oom = "out of memory: %d bytes free" % gc.mem_free()
        rt.last_error = "offload is off: " + _oom + " next to the model; it runs locally"   # STATS shows it
        return None


def unload(rt):
    global _oom
    _oom = ""
    if _switch is not None:
        _switch.release(rt)
    rt.input_copies = None
    if rt.model is not None:
        m = rt.model
        rt.model = None
        try:
            m.close()
        finally:
            gc.collect()


def load_model(rt, path, backend="auto"):
    """Load ``path`` with the engine, replacing the loaded model; returns the engine Model."""
    engine = _engine_module(rt)
    unload(rt)
    rt.times = None
    drop = getattr(rt, "drop_commands", None)    # the session and file commands' code goes back to the heap first
    if drop is not None:
        drop()
    gc.collect()
    rt.input_copies = None
    try:
        rt.model = engine.load(path, backend=backend)
    except engine.ModelError as e:
        rt.fail(E_MODEL, "%s: %s" % (path, e))
    except MemoryError:
        gc.collect()
        rt.fail(E_NO_MEMORY, "%s does not fit in RAM (heap free %d bytes after unloading)" % (path, gc.mem_free()))
    except OSError as e:
        if e.args and e.args[0] == 2:
            rt.fail(E_NOT_FOUND, "%s: no such file" % path)
        raise
    # The engine's planner may reuse an input's arena bytes once the input has been read (as TFLM does), so the
    # runtime keeps what the host set and puts it back before every run: INVOKE N runs N times on the same input.
    try:
        rt.input_copies = [bytearray(t.nbytes) for t in rt.model.inputs]
    except MemoryError:
        rt.input_copies = None
    _offload_after_load(rt)
    return rt.model


def _model(rt):
    if rt.model is None:
        rt.fail(E_NO_MODEL, "no model loaded: send LOAD first")
    return rt.model


def _tensor_text(t):
    return "%s|%s|%s|%r|%d|%d" % (t.name, "x".join(str(d) for d in t.shape), t.dtype, t.scale, t.zero_point,
                                  t.nbytes)


def _load(rt):
    raw = bytes(rt.payload_view())
    sep = raw.find(b"\0")
    if sep < 0:
        rt.fail(E_BAD_ARGS, "LOAD wants 'backend\\0path'")
    backend = raw[:sep].decode() or "auto"
    path = raw[sep + 1:].decode()
    t0 = time.ticks_ms()
    m = load_model(rt, path, backend)
    load_ms = time.ticks_diff(time.ticks_ms(), t0)
    pairs = [("backend", m.backend), ("load_ms", load_ms)]
    for k, v in m.stats().items():
        if k != "backend":
            pairs.append((k, v))
    for i, t in enumerate(m.inputs):
        pairs.append(("input%d" % i, _tensor_text(t)))
    for i, t in enumerate(m.outputs):
        pairs.append(("output%d" % i, _tensor_text(t)))
    rt.collect()
    pairs.append(("heap_free_bytes", gc.mem_free()))
    pairs.append(("input_kept", int(rt.input_copies is not None)))
    mode, error = _mode_error(rt)
    pairs.append(("offload", mode))
    if error:
        pairs.append(("offload_error", error.replace("\n", " ")))
    rt.reply_kv(pairs)


def _tensor_buffer(rt, index, inputs):
    m = _model(rt)
    tensors = m.inputs if inputs else m.outputs
    if index >= len(tensors):
        rt.fail(E_BAD_ARGS, "the model has %d %s, no index %d" % (len(tensors), "inputs" if inputs else "outputs",
                                                                   index))
    return m.input_buffer(index) if inputs else m.output_buffer(index)


def _set_input(rt):
    if rt.fio.n < 5:
        rt.fail(E_BAD_ARGS, "SET_INPUT wants index u8, offset u32 and data")
    buf = rt.fio.buf
    index = buf[HEADER_BYTES]
    offset = u32(buf, HEADER_BYTES + 1)
    n = rt.fio.n - 5
    dst = _tensor_buffer(rt, index, True)
    if offset + n > len(dst):
        rt.fail(E_BAD_ARGS, "input %d has %d bytes; %d at offset %d do not fit" % (index, len(dst), n, offset))
    dst[offset:offset + n] = rt.payload_view(5)
    if rt.input_copies is not None:
        rt.input_copies[index][offset:offset + n] = rt.payload_view(5)
    rt.reply_small(0)


def _get_output(rt):
    if rt.fio.n != 7:
        rt.fail(E_BAD_ARGS, "GET_OUTPUT wants index u8, offset u32, max u16")
    buf = rt.fio.buf
    index = buf[HEADER_BYTES]
    offset = u32(buf, HEADER_BYTES + 1)
    want = min(u16(buf, HEADER_BYTES + 5), rt.max_payload - 4)
    src = _tensor_buffer(rt, index, False)
    total = len(src)
    n = max(0, min(want, total - offset))
    put32(buf, HEADER_BYTES, total)
    rt.fio.payload[4:4 + n] = src[offset:offset + n]
    rt.reply_big(4 + n)


def _invoke(rt):
    if rt.fio.n != 8:
        rt.fail(E_BAD_ARGS, "INVOKE wants runs u32, warmup u32")
    buf = rt.fio.buf
    n = u32(buf, HEADER_BYTES)
    warmup = u32(buf, HEADER_BYTES + 4)
    stream = rt.fio.flags & FLAG_STREAM
    m = _model(rt)
    rt.times = None
    rt.times_n = 0
    gc.collect()
    try:
        times = bytearray(4 * n)
    except MemoryError:
        rt.fail(E_NO_MEMORY, "%d runs need %d bytes for their timings; ask for fewer runs per INVOKE" % (n, 4 * n))
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
    rt.times_n = n
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
        rt.fail(E_BAD_ARGS, "INFER carries %d bytes but input 0 has %d" % (n, len(dst)))
    out_len = m.outputs[0].nbytes
    want_info = rt.fio.flags & FLAG_INFO
    head = 5 + INFO_BYTES if want_info else 4
    if out_len + head > rt.max_payload:
        rt.fail(E_TOO_BIG, "output 0 has %d bytes, more than one frame; use INVOKE and GET_OUTPUT" % out_len)
    data = rt.payload_view()
    if rt.input_copies is not None:
        rt.input_copies[0][:] = data
    p = _checked(rt, False)
    if p is None:
        dst[:] = data
        t0 = time.ticks_us()
        m.invoke()
        dt = time.ticks_diff(time.ticks_us(), t0)
        out = m.output_buffer(0)
        info = None
    else:
        out, info = p.predict(data)          # same input, same output layout, local or remote
        dt = info.total_us
        if len(out) != out_len:
            rt.fail(E_INTERNAL, "offload answer has %d bytes, output 0 has %d" % (len(out), out_len))
    buf = rt.fio.buf
    put32(buf, HEADER_BYTES, dt)
    if want_info:
        buf[HEADER_BYTES + 4] = INFO_BYTES
        if info is None:                     # local: no need to import the switch module for an empty record
            struct.pack_into(_INFO_LOCAL, buf, HEADER_BYTES + 5, float("nan"), dt, dt, 0, 0)
        else:
            _switch_module().pack_info(buf, HEADER_BYTES + 5, info, dt, _mode_error(rt)[0])
    rt.fio.payload[head:head + out_len] = out
    rt.reply_big(head + out_len)


def _unload(rt):
    unload(rt)
    rt.reply_small(0)


_HANDLERS = {LOAD: _load, SET_INPUT: _set_input, INVOKE: _invoke, GET_OUTPUT: _get_output, INFER: _infer,
             UNLOAD: _unload}


def handle(rt, ftype):
    h = _HANDLERS.get(ftype)
    if h is None:
        rt.fail(E_BAD_ARGS, "command 0x%02x is not a model command" % ftype)
    h(rt)

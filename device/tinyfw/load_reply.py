# tinyfw LOAD reply: the lines of a LOAD reply but its heap line (docs/protocol.md), written into the frame buffer.
# tinyfw.cmd_load imports this module once the model is loaded and the runtime drops it with tinyfw.cmd_load, so that
# its code is not in the heap while the engine loads a model.
import sys


def write(rt, m, load_ms):
    """The reply's lines for the loaded model ``m``: the engine's stats, its tensors, whether the input is kept, how
    offload stands; returns their length."""
    n = kv(rt, 0, "backend", m.backend)
    n = kv(rt, n, "load_ms", load_ms)
    for k, v in m.stats().items():
        if k != "backend":
            n = kv(rt, n, k, v)
    for i, t in enumerate(m.inputs):
        n = kv(rt, n, "input%d" % i, _tensor_text(t))
    for i, t in enumerate(m.outputs):
        n = kv(rt, n, "output%d" % i, _tensor_text(t))
    n = kv(rt, n, "input_kept", int(rt.input_copies is not None))
    cmd_model = sys.modules.get("tinyfw.cmd_model")        # loaded where /offload.json exists (load_model)
    predictor = cmd_model and cmd_model._predictor
    n = kv(rt, n, "offload", predictor.mode if predictor else "off")
    if cmd_model and cmd_model._why:
        n = kv(rt, n, "offload_error", cmd_model._why.replace("\n", " "))
    return n


def kv(rt, n, key, value):
    """Append the line key=value to the reply being built in the frame buffer (n bytes so far); the new length.
    Line by line: next to a model the heap is in pieces too small for the whole text."""
    line = ("%s%s=%s" % ("\n" if n else "", key, value)).encode()
    end = min(n + len(line), rt.max_payload)
    rt.fio.payload[n:end] = line[:end - n]
    return end


def _tensor_text(t):
    return "%s|%s|%s|%r|%d|%d" % (t.name, "x".join(str(d) for d in t.shape), t.dtype, t.scale, t.zero_point,
                                  t.nbytes)

# tinyfw model loading: the LOAD command and Runtime.load_model (docs/protocol.md).
#
# The runtime imports this module twice for one load (Runtime._modelload): before the engine loads the model, to make
# room (begin: the loaded model, a stream and the command modules go), and after it, to finish (finish: input copies,
# offload, the board-time costs; then the LOAD reply or the error). In between it is dropped, so that neither its code
# nor the model commands' code (tinyfw.cmd_model, dropped in begin and imported again after the load) holds heap
# while the engine builds the model, the load's peak (docs/engine.md, "Memory").
# Protocol numbers are private copies (compiled away; tests/test_device_constants.py checks them).
import gc
import sys

from micropython import const

from tinyfw.frame import DevError

_E_BAD_ARGS = const(2)
_E_NOT_FOUND = const(3)
_E_MODEL = const(9)
_E_NO_MEMORY = const(10)
_E_NO_ENGINE = const(12)


def request_args(rt):
    """The arguments of a LOAD request ('backend\\0path', then '\\0' and the heap to leave free in decimal bytes, if
    any): (backend, path, keep_free_bytes)."""
    fields = bytes(rt.payload_view()).split(b"\0")
    if not 2 <= len(fields) <= 3 or (len(fields) == 3 and not fields[2].isdigit()):
        raise DevError(_E_BAD_ARGS, "LOAD wants 'backend\\0path' or 'backend\\0path\\0keep_free_bytes'")
    return fields[0].decode() or "auto", fields[1].decode(), int(fields[2]) if len(fields) == 3 else 0


def begin(rt):
    """Make room for a model: a stream ends, the loaded model, its input copies and offload go, then the session,
    file and model commands' code. Returns the engine module (tinyfw.engine)."""
    try:
        from tinyfw import engine
    except ImportError as e:
        raise DevError(_E_NO_ENGINE, "no model engine on this board (tinyfw.engine: %s); run `tinyhost flash`" % e)
    cmd_stream = sys.modules.get("tinyfw.cmd_stream")
    if cmd_stream is not None:
        cmd_stream.stop()                    # a stream runs over the loaded model: it ends with it
    cmd_stream = None
    if rt.model is not None or "tinyfw.cmd_model" in sys.modules:
        rt.model_module().unload(rt)         # the loaded model, its input copies and offload go first
    rt.times = None
    rt.drop_commands()         # the session, file and model commands' code goes back to the heap first
    return engine


def load_error(path, e, free_bytes):
    """The DevError that tells why the engine did not load ``path`` (``e``, raised by engine.load with
    ``free_bytes`` of heap free once the load gave up); ``e`` itself where it is none of the load's own errors."""
    if isinstance(e, MemoryError):
        return DevError(_E_NO_MEMORY, "%s does not fit in RAM (%s; heap free %d bytes after unloading)"
                        % (path, e, free_bytes))
    if isinstance(e, OSError):
        return DevError(_E_NOT_FOUND, "%s: no such file" % path) if e.args and e.args[0] == 2 else e
    from tinyfw.engine import ModelError     # resident: begin imported it
    if isinstance(e, ModelError):
        return DevError(_E_MODEL, "%s: %s" % (path, e))
    return e


def finish(rt, path, keep_free_bytes):
    """After the engine loaded ``rt.model`` from ``path``: its input copies, offload, the board-time costs."""
    # The engine's planner may reuse an input's arena bytes once the input has been read (as TFLM does), so the
    # runtime keeps what the host set and puts it back before every run: INVOKE N runs N times on the same input.
    # Not for a model loaded leaving heap free (a stream's, which writes the input itself before every run).
    rt.input_copies = None
    if not keep_free_bytes:
        try:
            rt.input_copies = [bytearray(t.nbytes) for t in rt.model.inputs]
        except MemoryError:
            pass
    if _exists(OFFLOAD_CONFIG):
        rt.model_module()._offload(rt, True)     # /offload.json is read at every load
    # else tinyfw.cmd_model stays out of the heap (it was dropped in begin) until a model command imports it: a model
    # loaded for a stream runs beside the front end without it
    board_time(path)
    return rt.model


def reply(rt, m, load_ms):
    """Write the LOAD reply but its heap line into the frame buffer (tinyfw.load_reply); returns its length (the
    runtime adds the heap line once this code is dropped, and sends the reply)."""
    from tinyfw import load_reply       # the reply's code comes in once the model is loaded (the runtime drops it)
    return load_reply.write(rt, m, load_ms)


OFFLOAD_CONFIG = "/offload.json"     # tinyfw.cmd_model's _OFFLOAD_CONFIG


def _exists(path):
    try:
        open(path).close()
        return True
    except OSError:
        return False


BOARD_TIME_FILE = "/board_time"     # on a virtual board: "version invoke_ns hop_ns path" a line (tinyhost writes it)


def board_time(path):
    """On the virtual board: the board-time model's costs of the model at ``path`` (its line in BOARD_TIME_FILE)
    for tinyfw.clock, which then gives board time; a model without a line gives the VM's own time. tinyfw.clock is
    imported only when there is something to tell it (it stays resident next to the model)."""
    if "_vboard" not in sys.modules:
        return
    line = None
    try:
        with open(BOARD_TIME_FILE) as f:
            for text in f:
                parts = text.split()
                if len(parts) == 4 and parts[3] == path:
                    line = parts
                    break
    except OSError:
        pass
    if line is None and "tinyfw.clock" not in sys.modules:
        return
    from tinyfw import clock
    try:
        clock.set_costs(int(line[1]), int(line[2]), line[0], path) if line else clock.set_costs(0, 0, "", path)
    except ValueError:
        clock.set_costs(0, 0, "", path)

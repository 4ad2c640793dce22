# The board's clock for the times the firmware reports (EEMBC m-lap-us, stream time stamps): one clock, two kinds.
#
# On a real board it is the real clock: time.ticks_us() without its wrap-around. On the virtual board (the
# MicroPython VM of tinyhost.sim, recognised by its _vboard module) the host's CPU time would say nothing about the
# chip, so once the host has told the board what its work costs on the chip it stands in for (set_costs(): the
# board-time model's estimate of one invoke of the loaded model and of one front-end hop, docs/board-time.md), the
# clock is board time: it advances only by the modelled cost of the work done (invoked(), hops()) and by waiting
# for audio that has not arrived yet (wait_until_us()). Until then the virtual board reports the VM's own time;
# model() says which clock answers ("" for a real clock, else the board-time model's version, e.g. "bt-2").
# tinyfw.cmd_load sets the costs at each load on a virtual board from BOARD_TIME_FILE, which the host writes.
# Small on purpose: it stays resident next to a model that may need nearly the whole heap.
import time

_VIRTUAL = 0        # True on the virtual board (None until looked at)
_US = 1             # real clock: microseconds so far, and the last ticks_us() reading
_TICKS = 2
_NS = 3             # board time in nanoseconds (virtual board with costs set)
_INVOKE_NS = 4      # modelled cost of one invoke, one front-end hop
_HOP_NS = 5
_MODEL = 6          # the board-time model's version ("" while the clock is real)
_PATH = 7           # the path of the model the costs are for
_st = [None, 0, None, 0, 0, 0, "", ""]


def virtual():
    """True on the virtual board."""
    st = _st
    if st[_VIRTUAL] is None:
        try:
            import _vboard     # noqa: F401 (only the virtual board has it)
            st[_VIRTUAL] = True
        except ImportError:
            st[_VIRTUAL] = False
    return st[_VIRTUAL]


def _real_us():
    if not hasattr(time, "ticks_us"):          # CPython (host-side tests)
        return time.perf_counter_ns() // 1000
    st = _st
    t = time.ticks_us()
    if st[_TICKS] is not None:
        st[_US] += time.ticks_diff(t, st[_TICKS])
    st[_TICKS] = t
    return st[_US]


def now_us():
    """Microseconds since the first call: board time on a virtual board with costs set, else the real clock
    (correct as long as it is read at least every ~8 minutes: ticks wrap every 2**30 us on most ports)."""
    st = _st
    if st[_MODEL]:
        return st[_NS] // 1000
    return _real_us()


def model():
    """The board-time model's version while the clock is board time, else "" (a real clock)."""
    return _st[_MODEL]


def set_costs(invoke_ns, hop_ns, version, path=""):
    """The modelled cost of one invoke and one front-end hop of the model at ``path`` on the chip the virtual
    board stands in for; from now on the virtual board's clock is board time (it goes on from where it is), and
    with no costs (version "") the real clock again. A real board ignores this: its clock stays real. Returns
    whether the clock is board time."""
    st = _st
    st[_PATH] = path
    if not virtual():
        return False
    if not st[_MODEL]:
        st[_NS] = _real_us() * 1000
    elif not version:
        st[_US] = st[_NS] // 1000          # the real clock goes on from board time: no step back
        st[_TICKS] = None
    st[_INVOKE_NS] = invoke_ns
    st[_HOP_NS] = hop_ns
    st[_MODEL] = version if (invoke_ns or hop_ns) else ""
    return bool(st[_MODEL])


def costs_ns():
    """(invoke, hop) nanoseconds of the board-time model; (0, 0) on a real clock."""
    st = _st
    return (st[_INVOKE_NS], st[_HOP_NS]) if st[_MODEL] else (0, 0)


def invoked(n=1):
    """n invokes of the model were done: board time advances by their modelled cost (nothing on a real clock)."""
    st = _st
    if st[_MODEL]:
        st[_NS] += n * st[_INVOKE_NS]


def hops(n=1):
    """n front-end hops were computed: board time advances by their modelled cost (nothing on a real clock)."""
    st = _st
    if st[_MODEL]:
        st[_NS] += n * st[_HOP_NS]


def wait_until_us(t_us):
    """The board idles until t_us (audio that has not arrived yet): board time moves to t_us if it is earlier.
    On a real clock time passes by itself."""
    st = _st
    if st[_MODEL] and st[_NS] < t_us * 1000:
        st[_NS] = t_us * 1000



def loaded_path():
    """The path of the model loaded last ("" when none was)."""
    return _st[_PATH]

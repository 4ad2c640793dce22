# Arena allocation, the load step between plan check and step build: decide where the weights live and allocate
# the tensor arena (engine.Model._load imports it, calls allocate, and drops it before plan_read builds the steps,
# so that its code is not in the heap at the build's peak). Where each tensor lies in the arena is the plan's
# (arena_layout.py, on the host or in the full path).
from . import ModelError, _mem_free, _gc, _int8_buffer, _stage, STREAM_SCRATCH_BYTES, WORK_RESERVE

try:
    from micropython import const
except ImportError:          # CPython (host tools)
    def const(x):
        return x

# header fields (plan_check's; copies tied by tests/test_device_constants.py)
_H_ARENA_BYTES = const(5)
_H_OPS = const(7)
_H_CHAN_BYTES = const(10)
_H_FILTER_BYTES = const(11)
_H_ARENA_STREAMED_BYTES = const(13)
_H_ARENA_RAM_BYTES = const(14)
_H_MAX_CHANNELS = const(15)

# With weights streamed, the work area grows up to STREAM_RESERVE when the heap has room (a full weight block,
# the kernel's scratch beside it, an operator's channel data): fewer, larger reads and kernel calls per operator
# (AD on the esp32 heap: 82 of 1-5 KB per inference -> 14 of up to 32 KB), while KEEP_FREE bytes stay free for
# the runtime.
STREAM_RESERVE = 2 * STREAM_SCRATCH_BYTES + WORK_RESERVE
KEEP_FREE = 16384


def allocate(f, h, arena_bytes, weights, k, lean=False, keep_free_bytes=0):
    """Decide where the weights live and allocate the one tensor arena. Weights: in place when the model file is
    memory-mapped (ROMFS: memoryview(file) works) and the backend reads filters as raw bytes ("mapped": no RAM, no
    reads at invoke, as TFLM reads flash), else in RAM or streamed (weights="auto": by the free heap). Arena: the
    activations as planned, every operator's work area floor above its live tensors (plan header: with weights
    streamed / in RAM), plus WORK_RESERVE bytes of kernel scratch when the heap has them (kernels without enough
    scratch read their tensors in place: same results, slower).

    With weights streamed, what the heap can spare beyond KEEP_FREE goes first to keeping the per-channel data in
    RAM (else it is read per operator at invoke, when larger than twice the widest layer's), then to a work area
    of up to STREAM_RESERVE bytes (larger weight blocks): same results, fewer reads per inference. ``lean``: none
    of that (weights="auto" streams when the file is not mapped, channel data streamed, no work reserve): the
    retry when the build did not fit beside the first choice. ``keep_free_bytes``: heap the caller needs after the
    load, not counted as free in these choices.

    f: the open model file; h: plan_check.check()'s header tuple; k: the backend module. Returns (the arena,
    weights "ram", "flash" or "mapped", whether per-channel data is to be read per operator at invoke, the mapped
    model file's memoryview or None)."""
    filters, need_streamed, need_ram = h[_H_FILTER_BYTES], h[_H_ARENA_STREAMED_BYTES], h[_H_ARENA_RAM_BYTES]
    if _gc is not None:
        _gc.collect()
    mapped = None
    if weights in ("auto", "mapped") and getattr(k, "FILTERS_AS_BYTES", False):
        try:
            mapped = memoryview(f)              # the file's bytes in place: ROMFS maps them, other files refuse
            weights = "mapped"
        except TypeError:
            pass
    if weights == "mapped" and mapped is None:
        raise ValueError("weights='mapped' needs the model in ROMFS (/rom) and the viper backend")
    if weights == "auto" and lean:
        weights = "flash"
    if weights == "auto":
        weights = "ram"
        # RAM when the filters take at most half of what the arena and the steps (~4 KB) leave (this module's
        # code is in the heap already)
        if _mem_free is not None and filters > (_mem_free() - keep_free_bytes - need_ram - WORK_RESERVE - 4096) // 2:
            weights = "flash"
    chan_bytes, max_ch = h[_H_CHAN_BYTES], h[_H_MAX_CHANNELS]
    stream_chan = weights != "ram" and chan_bytes > 2 * 12 * max_ch
    # the plan's streamed floors also keep room at the arena's end for one operator's streamed channel data
    needed = need_streamed if weights == "flash" or stream_chan else need_ram
    if lean:
        sizes = (needed,)
    elif arena_bytes is not None:
        if arena_bytes < needed:
            raise ModelError("arena too small: the model needs %d bytes of tensor arena (activations %d, the "
                             "rest operator work areas), arena_bytes=%d"
                             % (needed, h[_H_ARENA_BYTES], arena_bytes))
        sizes = (arena_bytes,)
    else:
        sizes = (needed,)
        if _mem_free is not None:
            # the reserve only when what build() needs still fits beside it: ~0.6 KB an operator and ~2 KB of
            # working objects, the per-channel data kept in RAM (streamed: one operator's), the filters when they
            # stay in RAM
            free = _mem_free() - keep_free_bytes
            build = 2048 + 600 * h[_H_OPS] + (filters if weights == "ram" else 0)
            if stream_chan and free - needed - build - chan_bytes - WORK_RESERVE >= KEEP_FREE:
                stream_chan = False
                if weights == "mapped":
                    needed = need_ram
            build += min(chan_bytes, 12 * max_ch + 2048) if stream_chan else chan_bytes
            spare = free - needed - build
            if weights == "flash" and spare - KEEP_FREE > WORK_RESERVE:
                sizes = (needed + (min(spare - KEEP_FREE, STREAM_RESERVE) & ~15), needed + WORK_RESERVE, needed)
            elif spare >= WORK_RESERVE:
                sizes = (needed + WORK_RESERVE, needed)
        else:
            sizes = (needed + WORK_RESERVE,)
    for total in sizes:
        try:
            arena = _int8_buffer(total)
            break
        except MemoryError:
            if total == sizes[-1]:
                raise MemoryError("no free block of %d bytes for the tensor arena (heap free: %s bytes in all)"
                                  % (total, _mem_free() if _mem_free else "?"))
    _stage("arena allocated")
    return arena, weights, stream_chan, mapped

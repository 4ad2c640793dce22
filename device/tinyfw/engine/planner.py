# Static memory planning of activation tensors in one arena (TFLM's GreedyMemoryPlanner idea).
#
# Buffers are sorted by size (largest first) and each is placed at the lowest offset where it overlaps no
# already-placed buffer that is alive during any of the same operators. Lifetimes are inclusive operator indices.

ALIGN = 16


def _align(n):
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def _place(order, sizes, first, last):
    """Greedy first fit in the given order: (offsets, arena bytes)."""
    offsets = [0] * len(sizes)
    placed = []                       # buffer indices placed so far, kept sorted by offset
    arena = 0
    for i in order:
        need = _align(sizes[i])
        candidate = 0
        for j in placed:
            if last[j] < first[i] or first[j] > last[i]:
                continue              # not alive at the same time
            if offsets[j] >= candidate + need:
                break                 # the gap before j fits
            end = offsets[j] + _align(sizes[j])
            if end > candidate:
                candidate = end
        offsets[i] = candidate
        k = 0
        while k < len(placed) and offsets[placed[k]] <= candidate:
            k += 1
        placed.insert(k, i)
        if candidate + need > arena:
            arena = candidate + need
    return offsets, arena


# Orders tried, the first one is TFLM's (largest first). A buffer placed early takes the low offsets; when a
# large short-lived buffer (a graph input) grabs offset 0, its neighbours in time can be pushed up, so the same
# first fit is also run in orders that favour buffers that are alive late, and the smallest arena wins
# (MobileNetV1 0.25 at 96x96: 64,512 bytes largest-first, 55,296 = the largest pair of live buffers otherwise).
_ORDERS = (
    lambda s, f, l, i: (-s[i], f[i], i),                 # largest first (TFLM GreedyMemoryPlanner)
    lambda s, f, l, i: (-s[i], -l[i], i),                # largest first, later-living first among equals
    lambda s, f, l, i: (-l[i], -s[i], i),                # reverse execution order
    lambda s, f, l, i: (-s[i] * (l[i] - f[i] + 1), i),   # largest size x lifetime first
)


def plan(sizes, first, last):
    """sizes/first/last: lists per buffer (size in bytes, first and last operator index that uses it).

    Returns (offsets, arena_bytes); offsets are multiples of ALIGN. The smallest of the greedy first-fit
    placements in _ORDERS (the first one on a tie)."""
    n = len(sizes)
    best = None
    for key in _ORDERS:
        order = sorted(range(n), key=lambda i: key(sizes, first, last, i))
        offsets, arena = _place(order, sizes, first, last)
        if best is None or arena < best[1]:
            best = (offsets, arena)
    return best


def tops(sizes, first, last, offsets, n_ops):
    """Per operator: the end of the highest buffer alive during it (aligned), i.e. where free arena begins."""
    out = [0] * n_ops
    for i in range(len(sizes)):
        end = offsets[i] + _align(sizes[i])
        for k in range(first[i], last[i] + 1):
            if end > out[k]:
                out[k] = end
    return out


def check(sizes, first, last, offsets):
    """True when no two buffers alive at the same time overlap (used by tests)."""
    n = len(sizes)
    for a in range(n):
        for b in range(a + 1, n):
            if last[a] < first[b] or last[b] < first[a]:
                continue
            if offsets[a] < offsets[b] + sizes[b] and offsets[b] < offsets[a] + sizes[a]:
                return False
    return True

# Static memory planning of activation tensors in one arena (TFLM's GreedyMemoryPlanner idea).
#
# Buffers are sorted by size (largest first) and each is placed at the lowest offset where it overlaps no
# already-placed buffer that is alive during any of the same operators. Lifetimes are inclusive operator indices.
#
# Overlapping pairs: a convolution run in bands of output rows reads each input row for the last time before its
# band's outputs are written, so its output may share bytes with its dying input as long as the input starts at
# least D bytes above the output (D = band_distance(...): a band's writes then only land on input rows that no
# later band reads). `pairs` maps (input buffer, output buffer) -> D; placement treats such a pair as compatible
# when the offsets satisfy it (or when they do not overlap at all).

ALIGN = 16


def _align(n):
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def _blocked(i, need, placed, offsets, sizes, first, last, pairs):
    """Sorted (lo, hi): buffer i may not start at c with lo < c < hi (a placed buffer alive at the same time)."""
    out = []
    for j in placed:
        if last[j] < first[i] or first[j] > last[i]:
            continue                  # not alive at the same time
        lo = offsets[j] - need
        hi = offsets[j] + _align(sizes[j])
        if pairs:
            d = pairs.get((j, i))
            if d is not None:         # i is the output of the convolution whose input is j: at or below j - d
                lo = offsets[j] - min(_align(d), need)
            d = pairs.get((i, j))
            if d is not None:         # i is the input, j the output: at or above j + d
                hi = min(offsets[j] + _align(d), hi)
        if lo < hi:
            out.append((lo, hi))
    out.sort()
    return out


def _place(order, sizes, first, last, pairs):
    """Greedy first fit in the given order: (offsets, arena bytes)."""
    offsets = [0] * len(sizes)
    placed = []
    arena = 0
    for i in order:
        need = _align(sizes[i])
        candidate = 0
        for lo, hi in _blocked(i, need, placed, offsets, sizes, first, last, pairs):
            if candidate <= lo:
                break                 # the gap before this one fits (and every later one starts higher)
            if hi > candidate:
                candidate = hi
        offsets[i] = candidate
        placed.append(i)
        if candidate + need > arena:
            arena = candidate + need
    return offsets, arena


def _place_span(order, sizes, first, last, pairs):
    """Greedy in the given order, each buffer where it widens the occupied span least (offsets may go below the
    first buffer's, then everything is shifted up to 0): an overlapping pair's output can go below its input
    even when the input came first. (offsets, arena bytes)."""
    offsets = [0] * len(sizes)
    placed = []
    low = high = 0
    for i in order:
        need = _align(sizes[i])
        if not placed:
            offsets[i] = 0
            low, high = 0, need
            placed.append(i)
            continue
        blocked = _blocked(i, need, placed, offsets, sizes, first, last, pairs)
        best = None
        for c in [low, high - need] + [b[0] for b in blocked] + [b[1] for b in blocked]:
            for lo, hi in blocked:
                if lo < c < hi:
                    break
            else:
                key = (max(high, c + need) - min(low, c), c < low, c)
                if best is None or key < best:
                    best = key
        c = best[2]
        offsets[i] = c
        placed.append(i)
        low, high = min(low, c), max(high, c + need)
    return [o - low for o in offsets], high - low


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


def plan(sizes, first, last, pairs=None):
    """sizes/first/last: lists per buffer (size in bytes, first and last operator index that uses it); pairs:
    {(input buffer, output buffer): D} that may overlap when offset[input] - offset[output] >= D.

    Returns (offsets, arena_bytes); offsets are multiples of ALIGN. The smallest of the greedy first-fit
    placements in _ORDERS (the first one on a tie); with pairs, also of the span-widening placements."""
    n = len(sizes)
    orders = [sorted(range(n), key=lambda i: key(sizes, first, last, i)) for key in _ORDERS]
    best = None
    for order in orders:
        offsets, arena = _place(order, sizes, first, last, pairs)
        if best is None or arena < best[1]:
            best = (offsets, arena)
    if pairs:
        orders.append(_pressure_order(sizes, first, last, pairs))
        for order in orders:
            offsets, arena = _place_span(order, sizes, first, last, pairs)
            if arena < best[1]:
                best = (offsets, arena)
    return best


def _pressure_order(sizes, first, last, pairs):
    """Buffers of the operators that need the most arena first (live bytes, an overlapping pair counted as the
    span it needs), larger ones first among them: the chain of overlapping pairs around the tightest operator is
    laid out before its neighbours."""
    n_ops = max(last) + 1 if last else 0
    pressure = [0] * n_ops
    for i in range(len(sizes)):
        for k in range(first[i], last[i] + 1):
            pressure[k] += _align(sizes[i])
    for (x, y), d in pairs.items():
        d = _align(d)
        span = max(d + _align(sizes[x]), _align(sizes[y])) - min(d, 0)
        pressure[last[x]] -= _align(sizes[x]) + _align(sizes[y]) - span
    top = [max(pressure[first[i]:last[i] + 1]) for i in range(len(sizes))]
    return sorted(range(len(sizes)), key=lambda i: (-top[i], -sizes[i], i))


def band_distance(rows, in_row_bytes, out_row_bytes, out_h, stride_h, pad_h):
    """D for a convolution run in bands of `rows` output rows (batch 1): the largest over bands of (end of the
    band's output bytes - first input byte that this band or a later one reads)."""
    d = None
    y = 0
    while y < out_h:
        first_row = y * stride_h - pad_h
        y = min(y + rows, out_h)
        gap = y * out_row_bytes - max(first_row, 0) * in_row_bytes
        if d is None or gap > d:
            d = gap
    return d


def tops(sizes, first, last, offsets, n_ops):
    """Per operator: the end of the highest buffer alive during it (aligned), i.e. where free arena begins."""
    out = [0] * n_ops
    for i in range(len(sizes)):
        end = offsets[i] + _align(sizes[i])
        for k in range(first[i], last[i] + 1):
            if end > out[k]:
                out[k] = end
    return out


def check(sizes, first, last, offsets, pairs=None):
    """True when no two buffers alive at the same time overlap, except pairs placed as they allow (tests)."""
    pairs = pairs or {}
    n = len(sizes)
    for a in range(n):
        for b in range(a + 1, n):
            if last[a] < first[b] or last[b] < first[a]:
                continue
            if offsets[a] < offsets[b] + sizes[b] and offsets[b] < offsets[a] + sizes[a]:
                if (a, b) in pairs and offsets[a] - offsets[b] >= pairs[(a, b)]:
                    continue
                if (b, a) in pairs and offsets[b] - offsets[a] >= pairs[(b, a)]:
                    continue
                return False
    return True

# Static memory planning of activation tensors in one arena (TFLM's GreedyMemoryPlanner idea).
#
# Buffers are sorted by size (largest first) and each is placed at the lowest offset where it overlaps no
# already-placed buffer that is alive during any of the same operators. Lifetimes are inclusive operator indices.

ALIGN = 16


def _align(n):
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def plan(sizes, first, last):
    """sizes/first/last: lists per buffer (size in bytes, first and last operator index that uses it).

    Returns (offsets, arena_bytes); offsets are multiples of ALIGN."""
    n = len(sizes)
    order = sorted(range(n), key=lambda i: (-sizes[i], first[i], i))
    offsets = [0] * n
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

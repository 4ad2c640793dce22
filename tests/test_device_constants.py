"""Protocol numbers copied into the firmware modules agree with the host's protocol module.

The resident runtime keeps its heap small on MicroPython by using private copies of the protocol numbers
(``_HELLO = const(0x01)`` is compiled away: no global, no qstr) in every module that uses them, tinyfw.frame
included (its table is the device side of docs/protocol.md; only the names tests/device/ scripts read are public).
These tests parse the device sources and require every copy to equal tinyhost.protocol's value, so a drift fails
here rather than on a board."""

import ast
from pathlib import Path

import pytest

from tinyhost import protocol as P
from tinyhost.client import BOOTSTRAP_MODULES, bootstrap_sources

TINYFW = Path(__file__).resolve().parents[1] / "device" / "tinyfw"
# the modules that carry private copies of protocol numbers
COPYING_MODULES = ("frame.py", "runtime.py", "session.py", "files.py", "inference.py", "modelload.py")


def protocol_values():
    """Device-side name -> value, from the host's definitions."""
    values = {t.name: int(t) for t in P.T}
    values.update({"E_" + c.name: int(c) for c in P.ErrorCode})
    values.update({"NAK_" + r.name: int(r) for r in P.NakReason})
    values.update(MAGIC0=P.MAGIC[0], MAGIC1=P.MAGIC[1], HEADER_BYTES=P.HEADER_BYTES, TRAILER_BYTES=P.TRAILER_BYTES,
                  PAYLOAD_LIMIT=P.PAYLOAD_LIMIT, PROTOCOL_VERSION=P.PROTOCOL_VERSION, FLAG_SYNC=P.FLAG_SYNC,
                  FLAG_STREAM=P.FLAG_STREAM)
    return values


def const_assignments(path):
    """{name: value} of the module's top-level ``NAME = const(value)`` lines."""
    out = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and \
                getattr(node.value.func, "id", "") == "const":
            out[node.targets[0].id] = ast.literal_eval(node.value.args[0])
    return out


@pytest.mark.parametrize("module", COPYING_MODULES)
def test_private_copies_equal_the_host_protocol(module):
    values = protocol_values()
    copies = {name[1:]: v for name, v in const_assignments(TINYFW / module).items()
              if name.startswith("_") and name[1:] in values}
    assert copies, f"{module} has no private protocol constants: update COPYING_MODULES"
    wrong = {name: (v, values[name]) for name, v in copies.items() if v != values[name]}
    assert wrong == {}, f"{module}: (device copy, host value) differ"


def test_frame_defines_every_protocol_number():
    """tinyfw.frame's table (public or private names) is complete: every host protocol number has its line."""
    names = {name.lstrip("_") for name in const_assignments(TINYFW / "frame.py")}
    assert set(protocol_values()) - names == set()


def test_frame_keeps_public_only_what_device_scripts_read():
    """Each public constant in tinyfw.frame is a module global and a qstr on the board: only these stay public."""
    public = {name for name in const_assignments(TINYFW / "frame.py") if not name.startswith("_")}
    assert public == {"HEADER_BYTES", "TRAILER_BYTES", "PUT_DATA", "R_FRAME", "R_EOF"}


def test_read_results_copied_into_runtime_equal_the_codecs():
    frame = {name.lstrip("_"): v for name, v in const_assignments(TINYFW / "frame.py").items()
             if name.lstrip("_").startswith("R_")}
    runtime = {name[1:]: v for name, v in const_assignments(TINYFW / "runtime.py").items()
               if name.startswith("_R_")}
    assert {"R_FRAME", "R_EOF", "R_BAD_CRC", "R_BAD_HEADER"} <= set(runtime)
    assert {name: frame.get(name) for name in runtime} == runtime


def test_copying_modules_import_only_code_from_frame():
    """A public protocol name imported from tinyfw.frame would be a global (dict slot) in the importer again."""
    values = protocol_values()
    for module in COPYING_MODULES:
        for node in ast.walk(ast.parse((TINYFW / module).read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "tinyfw.frame":
                names = {a.name for a in node.names}
                assert not names & set(values), f"{module} imports protocol constants {names & set(values)}"
                assert not any(n.startswith("R_") for n in names), module


def test_bootstrap_sources_drop_every_tinyfw_import():
    """The host sends these modules through the raw REPL into one namespace; their tinyfw imports must be single
    lines that bootstrap_sources() removes (a left-over one fails on a board without the package)."""
    scripts = bootstrap_sources(TINYFW.parent)
    assert len(scripts) == len(BOOTSTRAP_MODULES) + 1
    for name, script in zip(BOOTSTRAP_MODULES, scripts):
        top_level = [ln for ln in script.splitlines() if ln.startswith(("from tinyfw", "import tinyfw"))]
        assert top_level == [], name


def test_the_boot_model_file_is_where_the_firmware_reads_it():
    """`tinyhost flash --boot-model` writes the file tinyfw.textcmd reads the boot model's path from."""
    from tinyhost.flash import BOOT_MODEL_FILE

    tree = ast.parse((TINYFW / "textcmd.py").read_text())
    values = {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
              if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
              and node.targets[0].id == "BOOT_MODEL_FILE"}
    assert values == {"BOOT_MODEL_FILE": BOOT_MODEL_FILE}

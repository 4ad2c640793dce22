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
COPYING_MODULES = ("frame.py", "runtime.py", "cmd_session.py", "cmd_files.py", "cmd_model.py", "cmd_load.py",
                   "cmd_stream.py", "stream_setup.py", "loader.py")


def protocol_values():
    """Device-side name -> value, from the host's definitions."""
    values = {t.name: int(t) for t in P.T}
    values.update({"E_" + c.name: int(c) for c in P.ErrorCode})
    values.update({"NAK_" + r.name: int(r) for r in P.NakReason})
    values.update(MAGIC0=P.MAGIC[0], MAGIC1=P.MAGIC[1], HEADER_BYTES=P.HEADER_BYTES, TRAILER_BYTES=P.TRAILER_BYTES,
                  PAYLOAD_LIMIT=P.PAYLOAD_LIMIT, PROTOCOL_VERSION=P.PROTOCOL_VERSION, FLAG_SYNC=P.FLAG_SYNC,
                  FLAG_STREAM=P.FLAG_STREAM, FLAG_INFO=P.FLAG_INFO, INFO_BYTES=P.INFO_BYTES)
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
    assert len(scripts) > len(BOOTSTRAP_MODULES)
    for script in scripts:
        top_level = [ln for ln in script.splitlines() if ln.startswith(("from tinyfw", "import tinyfw"))]
        assert top_level == []


def test_bootstrap_units_are_small_and_each_knows_its_constants():
    """Each unit is compiled on the board alone (its source held beside the compiler); a private constant
    (`_X = const(...)`, compiled away) is known only in the unit that defines it, so each unit defines all of
    its module's."""
    import ast
    import re
    from tinyhost.client import BOOTSTRAP_UNIT_BYTES

    for script in bootstrap_sources(TINYFW.parent)[:-1]:
        body = "\n".join(ln for ln in script.splitlines() if not re.match(r"_[A-Za-z0-9_]+ = const\(", ln))
        assert len(body) <= BOOTSTRAP_UNIT_BYTES + 2000
        tree = ast.parse(script)
        defined = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                   if isinstance(t, ast.Name)}
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and re.fullmatch(r"_[A-Z][A-Z0-9_]*", n.id)}
        assert used <= defined, used - defined


# The engine's numbers shared between its modules: operator kinds (one numbering for the prepared operator, its plan
# record and its step), plan header fields and kernel parameter slots. Each module keeps private copies (compiled
# away on the board) of what it uses; the definitions: op_prepare (kinds), plan_check (header), params (slots).
ENGINE = TINYFW / "engine"
ENGINE_COPIES = [("_K_", "op_prepare.py", m) for m in ("__init__.py", "model_prepare.py", "plan_write.py",
                                                        "plan_read.py")] + \
                [("_H_", "plan_check.py", m) for m in ("__init__.py", "arena_alloc.py", "plan_read.py")]


@pytest.mark.parametrize("prefix, definition, module", ENGINE_COPIES)
def test_engine_copies_equal_their_definition(prefix, definition, module):
    defined = {n: v for n, v in const_assignments(ENGINE / definition).items() if n.startswith(prefix)}
    copies = {n: v for n, v in const_assignments(ENGINE / module).items() if n.startswith(prefix)}
    assert copies, f"{module} has no {prefix}* constants: update ENGINE_COPIES"
    assert set(copies) <= set(defined), f"{module}: {set(copies) - set(defined)} are not defined in {definition}"
    assert {n: v for n, v in copies.items() if v != defined[n]} == {}, f"{module} differs from {definition}"


def test_operator_kinds_are_one_numbering_from_one():
    kinds = {n: v for n, v in const_assignments(ENGINE / "op_prepare.py").items() if n.startswith("_K_")}
    assert sorted(kinds.values()) == list(range(1, len(kinds) + 1))
    assert kinds["_K_FC"] == max(kinds[k] for k in ("_K_CONV", "_K_DW", "_K_FC"))   # `kind <= _K_FC`: conv-like


def test_parameter_slot_copies_equal_params():
    """Model.invoke and plan_read read a convolution's parameter array by slot; past params.P_LEN it holds the six
    u32 that follow the parameters in the plan record (channels, weights offset, weights bytes, bytes per output
    channel, channel data offset, row band)."""
    params = const_assignments(ENGINE / "params.py")
    record_tail = {"CHANNELS": 0, "W_AT": 1, "W_BYTES": 2, "ROW_BYTES": 3, "CHAN_AT": 4, "BAND": 5}
    want = dict(params, **{"P_" + n: params["P_LEN"] + i for n, i in record_tail.items()})
    for module in ("__init__.py", "plan_read.py"):
        copies = {n[1:]: v for n, v in const_assignments(ENGINE / module).items() if n.startswith("_P_")}
        assert copies and set(copies) <= set(want), module
        assert {n: v for n, v in copies.items() if v != want[n]} == {}, module


def _tuples(module, function, appended_to=None):
    """The tuple displays that `function` in engine/`module` returns (or appends to the list `appended_to`)."""
    tree = next(n for n in ast.walk(ast.parse((ENGINE / module).read_text()))
                if isinstance(n, ast.FunctionDef) and n.name == function)
    out = []
    for n in ast.walk(tree):
        if appended_to is None and isinstance(n, ast.Return) and isinstance(n.value, ast.Tuple):
            out.append(n.value)
        elif appended_to and isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and \
                n.func.attr == "append" and getattr(n.func.value, "id", "") == appended_to and \
                isinstance(n.args[0], ast.Tuple):
            out.append(n.args[0])
    return [[e.id if isinstance(e, ast.Name) else None for e in t.elts] for t in out]


def _slots(module, prefix):
    """{lower-case slot name: index} of engine/`module`'s `prefix`* constants (`_S_BIAS` -> "bias")."""
    return {n[len(prefix):].lower(): v for n, v in const_assignments(ENGINE / module).items() if n.startswith(prefix)}


def test_steps_plan_read_builds_hold_what_invoke_reads_in_each_slot():
    slots = _slots("__init__.py", "_S_")
    steps = _tuples("plan_read.py", "build", appended_to="steps")
    assert len(steps) >= 8, steps
    assert all(s[:4] == ["kind", "fn", "out", "inp"] for s in steps), steps
    assert [slots["kind"], slots["fn"], slots["out"], slots["in"], slots["arg"]] == [0, 1, 2, 3, 4]
    conv = [s for s in steps if len(s) > 8]
    assert len(conv) == 1, "one place builds the convolution steps"
    by_slot = sorted((v, n) for n, v in slots.items() if n not in ("kind", "fn", "out", "in", "arg"))
    assert conv[0][4:] == [n for _, n in by_slot], "plan_read's convolution step and Model.invoke's _S_* differ"


def test_records_model_prepare_builds_hold_what_plan_write_reads_in_each_slot():
    slots = _slots("plan_write.py", "_R_")
    records = _tuples("model_prepare.py", "_record")
    assert len(records) >= 5, records
    for rec in records:
        assert rec[:3] == ["kind", "ins", "out"], rec
        assert all(name is not None and slots[name] == i for i, name in enumerate(rec)), rec


def test_the_boot_model_files_are_where_the_firmware_reads_them():
    """`tinyhost flash --boot-model` and `--mlperf-model` write the files tinyfw.boot_model reads the boot model's
    path from and tinyfw.eembc the benchmark `profile` names."""
    from tinyhost.flash import BOOT_MODEL_FILE, MLPERF_MODEL_FILE

    values = {}
    for module in ("boot_model.py", "eembc.py"):
        tree = ast.parse((TINYFW / module).read_text())
        values.update({node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
                       if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                       and node.targets[0].id in ("BOOT_MODEL_FILE", "MLPERF_MODEL_FILE")})
    assert values == {"BOOT_MODEL_FILE": BOOT_MODEL_FILE, "MLPERF_MODEL_FILE": MLPERF_MODEL_FILE}


def test_the_audio_reply_layout_is_the_hosts():
    """An AUDIO reply's detections and busy intervals: tinyfw.stream's sizes are tinyhost.protocol's."""
    sizes = const_assignments(TINYFW / "stream.py")
    assert (sizes["EVENT_BYTES"], sizes["BUSY_BYTES"]) == (P.DETECTION_BYTES, P.BUSY_BYTES)


def test_the_info_block_the_firmware_packs_is_the_one_the_host_unpacks():
    """INFER with FLAG_INFO: tinyfw.offload packs the offloaded record, tinyfw.cmd_model a local answer's; both
    must be tinyhost.protocol.INFO_BLOCK's 56 bytes."""
    import struct

    offload = (TINYFW / "offload" / "__init__.py").read_text()
    packed = [node.args[0].value for node in ast.walk(ast.parse(offload))
              if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "pack_into"
              and isinstance(node.args[0], ast.Constant) and len(node.args) > 10]
    assert packed == [P.INFO_BLOCK.format]
    local = ast.parse((TINYFW / "cmd_model.py").read_text())
    layout = next(node.value.value for node in local.body if isinstance(node, ast.Assign)
                  and getattr(node.targets[0], "id", "") == "_INFO_LOCAL")
    assert struct.calcsize(layout) == P.INFO_BYTES == 56


def test_the_text_command_modules_import_no_loop():
    """tinyfw.cmd_text imports tinyfw.eembc; neither eembc nor the boot-model module imports cmd_text back."""
    def imported(module):
        names = set()
        for node in ast.walk(ast.parse((TINYFW / module).read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "tinyfw":
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tinyfw."):
                names.add(node.module.split(".")[1])
        return names
    assert "eembc" in imported("cmd_text.py")
    assert "cmd_text" not in imported("eembc.py") and "cmd_text" not in imported("eembc_dut.py")
    assert imported("boot_model.py") == set()


def test_the_offload_frame_kinds_and_modes_are_the_hosts():
    """tinyfw.offload's private copies of the wire's frame kinds and of the offload modes (the INFO block's mode
    byte indexes them) equal tinyhost.offload's."""
    from tinyhost.offload import board, wire

    copies = const_assignments(TINYFW / "offload" / "__init__.py")
    kinds = {name: copies["_" + name] for name in ("HELLO", "WELCOME", "REQUEST", "REPLY", "SPLIT")}
    assert kinds == {"HELLO": wire.KIND_HELLO, "WELCOME": wire.KIND_WELCOME, "REQUEST": wire.KIND_REQUEST,
                     "REPLY": wire.KIND_REPLY, "SPLIT": wire.KIND_SPLIT}
    assert copies["_MODES"] == board.MODES == board.device_module().MODES

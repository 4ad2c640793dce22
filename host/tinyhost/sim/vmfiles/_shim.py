# Runs first inside the virtual board's MicroPython VM (`micropython -i _shim.py ...`), then the REPL starts.
# All the work is in _vboard (which stays importable); only the REPL's namespace is left clean.
import _vboard
if _vboard._boot():         # a reset into the friendly REPL with a main.py
    _vboard._boot_done()
    _vboard._run("main.py")
else:
    _vboard._boot_done()
del _vboard

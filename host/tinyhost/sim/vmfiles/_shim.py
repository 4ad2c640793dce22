# Runs first inside the virtual board's MicroPython VM (`micropython -i _shim.py ...`), then the REPL starts.
# All the work is in _vboard (which stays importable); only the REPL's namespace is left clean.
import _vboard
_vboard._boot()
del _vboard

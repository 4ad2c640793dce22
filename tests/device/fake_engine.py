# TEST DOUBLE of tinyfw.engine, for tests of the runtime's model commands only; never shipped or flashed.
# Tests put it on a virtual board as /tinyfw/engine/__init__.py. A "model" file is b"FAKE", input bytes u16,
# output bytes u16 (little-endian); invoke() writes output[i] = (sum(input) + i) & 0xFF. b"FAIL..." is rejected.
BACKENDS = ("fake",)


class ModelError(ValueError):
    pass


class TensorInfo:
    def __init__(self, name, nbytes):
        self.name = name
        self.shape = (1, nbytes)
        self.dtype = "int8"
        self.scale = 0.5
        self.zero_point = -3
        self.nbytes = nbytes


class Model:
    def __init__(self, n_in, n_out, keep_free_bytes=0):
        self.backend = "fake"
        self.keep_free_bytes = keep_free_bytes      # what LOAD asked the engine to leave free (stats reports it)
        self.inputs = [TensorInfo("in", n_in)]
        self.outputs = [TensorInfo("out", n_out)]
        self._in = bytearray(n_in)
        self._out = bytearray(n_out)
        self.invokes = 0

    def input_buffer(self, i=0):
        return memoryview(self._in)

    def output_buffer(self, i=0):
        return memoryview(self._out)

    def invoke(self):
        s = 0
        for b in self._in:
            s += b
        out = self._out
        for i in range(len(out)):
            out[i] = (s + i) & 0xFF
        self.invokes += 1

    def stats(self):
        return {"arena_bytes": len(self._in) + len(self._out), "weights_ram_bytes": 0, "ops": 1,
                "macs": len(self._in), "backend": self.backend, "keep_free_bytes": self.keep_free_bytes}

    def close(self):
        self._in = self._out = None


def load(path, backend="auto", arena_bytes=None, keep_free_bytes=0):
    if backend not in ("auto", "fake"):
        raise ModelError("unknown backend %r" % backend)
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] != b"FAKE" or len(head) != 8:
        raise ModelError("%s: not a fake model (magic %r)" % (path, head[:4]))
    return Model(head[4] | (head[5] << 8), head[6] | (head[7] << 8), keep_free_bytes)

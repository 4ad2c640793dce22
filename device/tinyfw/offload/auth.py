# tinyfw.offload.auth: HMAC-SHA256 (RFC 2104) with hashlib.sha256 and the session handshake of
# host/tinyhost/offload/auth.py. Imported by the Predictor only when the board's config has a key.
import hashlib


class Hmac:
    # The padded key blocks are computed once per key.
    def __init__(self, key):
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key + bytes(64 - len(key))
        self.inner = bytes(b ^ 0x36 for b in key)
        self.outer = bytes(b ^ 0x5C for b in key)

    def digest(self, data, data2=None):
        # data2: None, one more buffer, or a tuple of them (a split request's pieces)
        h = hashlib.sha256(self.inner)
        h.update(data)
        if isinstance(data2, tuple):
            for d in data2:
                h.update(d)
        elif data2 is not None:
            h.update(data2)
        o = hashlib.sha256(self.outer)
        o.update(h.digest())
        return o.digest()

    def session(self, client_nonce, server_nonce, proof):
        # The session's Hmac when the server's proof (HMAC(session key, b"welcome")) holds, else None.
        s = Hmac(self.digest(b"tinyhost-offload-v1" + client_nonce, server_nonce))
        return s if s.digest(b"welcome") == bytes(proof) else None

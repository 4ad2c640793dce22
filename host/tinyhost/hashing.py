"""SHA-256 of files, read in chunks (models and firmware files are compared with the board's copies by hash)."""

import hashlib

CHUNK_BYTES = 1 << 16


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()

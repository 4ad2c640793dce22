"""Per-device keys for offload and the HMAC-SHA256 challenge-response that uses them.

The token file is JSON, readable only by its owner (written with mode 0600, atomically)::

    {"version": 1, "devices": {"esp32-kitchen": {"key": "<64 hex digits>"}}}

A session: the device sends HELLO(device id, client nonce); the server answers WELCOME(server nonce, proof).
Both derive ``session key = HMAC(device key, b"tinyhost-offload-v1" + client nonce + server nonce)``; every later
frame carries ``HMAC(session key, header + body)``, and sequence numbers must increase, so a recorded frame can be
replayed neither within a session nor into another one. ``proof = HMAC(session key, b"welcome")`` shows the device
that the server knows its key too.
"""

import hashlib
import hmac
import json
import logging
import re
import secrets
from pathlib import Path

from ..atomic import write_text_atomic
from ..errors import UsageError

log = logging.getLogger(__name__)

KEY_BYTES = 32
SESSION_LABEL = b"tinyhost-offload-v1"
WELCOME_LABEL = b"welcome"
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class TokenFileError(UsageError):
    """The token file is missing, unreadable or malformed."""

    default_hint = ("create it with `tinyhost offload keygen --token-file FILE --device-id ID`, "
                    "or fix the JSON by hand (see docs/offload.md)")


def check_device_id(device_id):
    if not isinstance(device_id, str) or not DEVICE_ID_RE.match(device_id):
        raise UsageError(f"device id {device_id!r} is not valid",
                         hint="use 1-64 characters from A-Z a-z 0-9 . _ -")
    return device_id


def session_key(device_key, client_nonce, server_nonce):
    return hmac.new(device_key, SESSION_LABEL + client_nonce + server_nonce, hashlib.sha256).digest()


def frame_mac(key):
    """A mac_fn for wire.encode_frame: HMAC-SHA256 of the signed bytes under ``key``."""
    return lambda signed: hmac.new(key, signed, hashlib.sha256).digest()


def welcome_proof(session):
    return hmac.new(session, WELCOME_LABEL, hashlib.sha256).digest()


def macs_equal(a, b):
    return hmac.compare_digest(a, b)


def read_token_file(path):
    """{device id: key bytes} from a token file. Raises TokenFileError naming what is wrong."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TokenFileError(f"token file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenFileError(f"token file {path} cannot be read: {e}") from None
    if not isinstance(raw, dict) or raw.get("version") != 1 or not isinstance(raw.get("devices"), dict):
        raise TokenFileError(f"token file {path} must be an object with \"version\": 1 and \"devices\": {{...}}")
    keys = {}
    for device_id, entry in raw["devices"].items():
        if not DEVICE_ID_RE.match(device_id):
            raise TokenFileError(f"token file {path}: device id {device_id!r} is not valid (1-64 of A-Za-z0-9._-)")
        key_hex = entry.get("key") if isinstance(entry, dict) else None
        try:
            key = bytes.fromhex(key_hex)
        except (TypeError, ValueError):
            key = b""
        if len(key) < 16:
            raise TokenFileError(f"token file {path}: device {device_id!r} needs a \"key\" of at least 32 hex digits")
        keys[device_id] = key
    return keys


def write_token_file(path, keys):
    """Write {device id: key bytes} atomically (temporary file + rename) with mode 0600."""
    doc = {"version": 1, "devices": {d: {"key": k.hex()} for d, k in sorted(keys.items())}}
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n", mode=0o600)


def ensure_device_key(path, device_id, rotate=False):
    """The key of ``device_id`` in the token file, adding a fresh random one (and the file) when needed."""
    check_device_id(device_id)
    path = Path(path)
    keys = read_token_file(path) if path.exists() else {}
    if rotate or device_id not in keys:
        keys[device_id] = secrets.token_bytes(KEY_BYTES)
        write_token_file(path, keys)
        log.info("token file %s: %s key for device %s", path, "rotated" if rotate else "new", device_id)
    return keys[device_id]


class KeyStore:
    """Device keys from a token file, re-read when the file changes, so devices can be added while serving."""

    def __init__(self, path):
        self.path = Path(path)
        self._stamp = None
        self._keys = {}
        self._reload(force=True)

    def _reload(self, force=False):
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        if not force and stamp == self._stamp:
            return
        try:
            self._keys = read_token_file(self.path)
            self._stamp = stamp
        except TokenFileError as e:
            if force:
                raise
            log.error("keeping the previous keys: %s", e.message)

    def key_for(self, device_id):
        """The device's key, or None when it is unknown."""
        self._reload()
        return self._keys.get(device_id)

    def __len__(self):
        return len(self._keys)

"""Model registry: resolve names and paths, pull with SHA-256 verification from a loopback HTTP server."""

import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest

from tinyhost import zoo
from tinyhost.cli import main
from tinyhost.errors import ChecksumMismatch, ModelDownloadError, ModelError, UsageError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "mlperf-tiny"
GOOD = bytes(range(256)) * 40          # 10240 bytes standing in for a model file


def _entry(name="tst01", data=GOOD, filename="tst_model.tflite", url=""):
    return zoo.ModelEntry(name, "official", "test", "test model", filename, (1, 4), 2, url,
                          hashlib.sha256(data).hexdigest(), len(data))


class _Handler(http.server.BaseHTTPRequestHandler):
    files = {}          # path -> (bytes to send, Content-Length to claim or None)

    def do_GET(self):
        if self.path not in self.files:
            self.send_error(404)
            return
        body, claimed = self.files[self.path]
        self.send_response(200)
        if claimed is not None:
            self.send_header("Content-Length", str(claimed))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    _Handler.files = {
        "/good/tst_model.tflite": (GOOD, len(GOOD)),
        "/corrupt/tst_model.tflite": (GOOD[:-1] + b"\x00", len(GOOD)),
        "/truncated/tst_model.tflite": (GOOD[:4000], len(GOOD)),        # connection drops mid-file
        "/short/tst_model.tflite": (GOOD[:4000], None),                 # no length announced
    }
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYHOST_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"        # where pulled models go inside tinyhost's cache


def _leftovers(cache):
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_pull_from_official_url_verifies_and_installs(server, cache, monkeypatch):
    monkeypatch.setattr(zoo, "OFFICIAL", (_entry(url=f"{server}/good/tst_model.tflite"),))
    result = zoo.pull("tst01")
    assert result.path == cache / "tst_model.tflite" and not result.skipped
    assert result.path.read_bytes() == GOOD
    assert _leftovers(cache) == ["tst_model.tflite"]
    assert zoo.resolve("tst01") == result.path
    assert zoo.pull("tst01").skipped                   # second pull: already there, not fetched again


def test_pull_from_mirror_base_url(server, cache, monkeypatch):
    monkeypatch.setattr(zoo, "OFFICIAL", (_entry(url="http://127.0.0.1:9/unreachable"),))
    result = zoo.pull("tst01", source=f"{server}/good/")
    assert result.source == f"{server}/good/tst_model.tflite"
    assert result.path.read_bytes() == GOOD


@pytest.mark.parametrize("where, error", [("corrupt", ChecksumMismatch), ("truncated", ModelDownloadError),
                                          ("short", ModelDownloadError), ("missing", ModelDownloadError)])
def test_bad_downloads_are_refused_and_leave_nothing(server, cache, monkeypatch, where, error):
    monkeypatch.setattr(zoo, "OFFICIAL", (_entry(url=f"{server}/{where}/tst_model.tflite"),))
    with pytest.raises(error):
        zoo.pull("tst01")
    assert _leftovers(cache) == []
    with pytest.raises(UsageError, match="not downloaded"):
        zoo.resolve("tst01")


def test_failed_forced_repull_keeps_the_good_file(server, cache, monkeypatch):
    monkeypatch.setattr(zoo, "OFFICIAL", (_entry(url=f"{server}/good/tst_model.tflite"),))
    zoo.pull("tst01")
    with pytest.raises(ChecksumMismatch):
        zoo.pull("tst01", source=f"{server}/corrupt", force=True)
    assert (cache / "tst_model.tflite").read_bytes() == GOOD
    assert _leftovers(cache) == ["tst_model.tflite"]


def test_pull_from_local_folder_searches_subfolders(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(zoo, "OFFICIAL", (_entry(),))
    nested = tmp_path / "clone" / "benchmark" / "trained_models"
    nested.mkdir(parents=True)
    (nested / "tst_model.tflite").write_bytes(GOOD)
    assert zoo.pull("tst01", source=tmp_path / "clone").path.read_bytes() == GOOD


def test_local_copy_with_wrong_content_is_refused(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(zoo, "OFFICIAL", (_entry(),))
    (tmp_path / "tst_model.tflite").write_bytes(GOOD[::-1])
    with pytest.raises(ChecksumMismatch):
        zoo.pull("tst01", source=tmp_path)
    assert _leftovers(cache) == []


def test_corrupt_cached_file_is_reported(cache, monkeypatch):
    monkeypatch.setattr(zoo, "OFFICIAL", (_entry(),))
    cache.mkdir(parents=True)
    (cache / "tst_model.tflite").write_bytes(b"\x00" * len(GOOD))
    assert zoo.status(zoo.find("tst01")).state == "corrupt"
    with pytest.raises(ModelError, match="SHA-256"):
        zoo.resolve("tst01")


def test_resolve_paths_and_unknown_names(tmp_path, cache):
    model = tmp_path / "mine.tflite"
    model.write_bytes(b"TFL3")
    assert zoo.resolve(str(model)) == model
    with pytest.raises(UsageError, match="no such model file"):
        zoo.resolve(str(tmp_path / "absent.tflite"))
    with pytest.raises(UsageError) as info:
        zoo.resolve("kws02")
    assert "kws01" in info.value.hint and "vww" in info.value.hint
    with pytest.raises(UsageError, match="not downloaded"):
        zoo.resolve("ic01")
    assert zoo.find("KWS01").name == "kws01" and zoo.find("kws_ref_model").name == "kws01"


def test_shipped_models_resolve_inside_the_checkout():
    for name in ("kws", "vww"):
        path = zoo.resolve(name)
        assert path.name == f"{name}.tflite" and path.read_bytes()[4:8] == b"TFL3"
    with pytest.raises(UsageError, match="nothing to pull"):
        zoo.pull("kws")


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("TINYHOST_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert zoo.cache_dir() == tmp_path / "tinyhost" / "models"
    monkeypatch.setenv("TINYHOST_CACHE", str(tmp_path / "x"))
    assert zoo.cache_dir() == tmp_path / "x" / "models"


def test_official_registry_matches_the_published_files():
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} absent (the shared MLPerf Tiny models are not on this machine)")
    for entry in zoo.OFFICIAL:
        local = SHARED / entry.filename
        if local.is_file():
            assert (len(local.read_bytes()), zoo.sha256_file(local)) == (entry.size_bytes, entry.sha256)
        assert entry.url.startswith("https://github.com/mlcommons/tiny/raw/master/benchmark/training/")


def test_cli_list_and_pull_from_folder(cache, capsys):
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} absent")
    with pytest.raises(SystemExit) as code:
        main(["models", "pull", "kws01", "ic01", "ad01", "--from", str(SHARED)])
    assert code.value.code == 0
    with pytest.raises(SystemExit):
        main(["models", "list"])
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("name "))
    assert set(lines[header + 1]) == {"─"}                       # the rule under the header
    rows = {line.split()[0]: line.split() for line in lines[header + 2:header + 8]}
    assert rows["kws01"][-2] == "installed" and rows["ad01"][-2] == "installed"
    assert rows["vww01"][-3:-1] == ["not", "pulled"] and rows["kws"][-2] == "shipped"
    with pytest.raises(SystemExit) as code:
        main(["models", "pull", "vww01", "--from", str(SHARED)])
    assert code.value.code == ModelDownloadError.exit_code
    assert "vww_96_int8.tflite" in capsys.readouterr().err
    assert not list(Path(cache).glob("*.part"))


def test_cli_pull_from_folder_pulls_the_others_then_names_the_missing(tmp_path, cache, monkeypatch, capsys):
    monkeypatch.setattr(zoo, "OFFICIAL", (_entry(), _entry("tst02", GOOD[::-1], "absent_model.tflite")))
    (tmp_path / "tst_model.tflite").write_bytes(GOOD)
    with pytest.raises(SystemExit) as code:
        main(["models", "pull", "tst02", "tst01", "--from", str(tmp_path)])
    assert code.value.code == ModelDownloadError.exit_code == 14
    assert (cache / "tst_model.tflite").read_bytes() == GOOD          # pulled after the missing one
    err = capsys.readouterr().err
    assert "absent_model.tflite (for tst02) is not in" in err and "tst01" not in err


def test_cli_network_failure_is_a_download_error_not_a_model_error(server, cache, monkeypatch, capsys):
    monkeypatch.setattr(zoo, "OFFICIAL", (_entry(url=f"{server}/nowhere/tst_model.tflite"),))
    with pytest.raises(SystemExit) as code:
        main(["models", "pull", "tst01"])
    assert code.value.code == ModelDownloadError.exit_code != ModelError.exit_code
    assert "HTTP 404" in capsys.readouterr().err

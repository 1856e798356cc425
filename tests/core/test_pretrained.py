"""Prompts by name: the table, and download / cache / integrity end to end against an HTTP
server on 127.0.0.1 (no other network: every test points the download at it)."""
import dataclasses
import hashlib
import http.server
import logging
import pathlib
import socket
import threading

import pytest
import torch

import pomp_core
from pomp_core import pretrained
from pomp_core.cli import error_line
from pomp_core.errors import WeightsUnavailable
from pomp_core.prompt_io import save_release_prompt

B16_4 = "vit_b16_ep5_randaug2_unc1000_16shots_nctx4_cscFalse_ctpend_seed42.pth.tar"


@pytest.fixture
def server():
    """Serves ``files`` (URL path -> bytes); ``requests`` lists the paths asked for; ``claimed``
    (URL path -> bytes) announces a longer Content-Length than it sends, as a dropped connection."""
    files, requests, claimed = {}, [], {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(claimed.get(self.path, len(body))))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.files, httpd.requests, httpd.claimed = files, requests, claimed
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POMP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "prompts"


def with_entry(monkeypatch, entry) -> None:
    """Replace one entry of the (read-only) table for a test: e.g. with a known sha256."""
    monkeypatch.setattr(pretrained, "PROMPTS", {**pretrained.PROMPTS, entry.name: entry})


def closed_port_url() -> str:
    """An address on 127.0.0.1 where nothing listens: a download there fails at once, as offline."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def release_file(tmp_path, n_ctx=4, seed=0) -> bytes:
    """A prompt in the release's layout (Dassl's checkpoint dict, fp16 ctx) as the release names it."""
    ctx = torch.randn(n_ctx, 512, generator=torch.Generator().manual_seed(seed))
    folder = tmp_path / f"release{n_ctx}_{seed}"
    path = save_release_prompt(pomp_core.PromptLearner(n_ctx=n_ctx, width=512, ctx=ctx), folder, epoch=5)
    return path.read_bytes()


def expected_ctx(n_ctx=4, seed=0) -> torch.Tensor:
    return torch.randn(n_ctx, 512, generator=torch.Generator().manual_seed(seed)).half().float()


# name -> (release file, open_clip model, M, epochs, reported accuracies)
TABLE = {
    "pomp-vit-b16-ctx4": (B16_4, "ViT-B-16-quickgelu", 4, 5,
                          {"imagenet21k": 24.9, "cross_dataset": 66.7, "cross_domain": 60.4}),
    "pomp-vit-b16-ctx16": ("vit_b16_ep20_randaug2_unc1000_16shots_nctx16_cscFalse_ctpend_seed42.pth.tar",
                           "ViT-B-16-quickgelu", 16, 20,
                           {"imagenet21k": 25.2, "cross_dataset": 65.1, "cross_domain": 60.0}),
    "pomp-vit-b32-ctx4": ("vit_b32_ep5_randaug2_unc1000_16shots_nctx4_cscFalse_ctpend_seed42.pth.tar",
                          "ViT-B-32-quickgelu", 4, 5, {"cross_dataset": 62.0}),
    "pomp-vit-b32-ctx16": ("vit_b32_ep20_randaug2_unc1000_16shots_nctx16_cscFalse_ctpend_seed42.pth.tar",
                           "ViT-B-32-quickgelu", 16, 20, {"cross_dataset": 61.8}),
}


@pytest.mark.parametrize("name", list(TABLE))
def test_table_and_aliases(name):
    filename, model_name, n_ctx, epochs, accuracy = TABLE[name]
    entry = pretrained.pretrained_info(name)
    assert (entry.filename, entry.model_name, entry.pretrained, entry.n_ctx, entry.epochs, entry.accuracy) == \
        (filename, model_name, "openai", n_ctx, epochs, accuracy)
    assert entry.url.startswith("https://") and entry.source.startswith("https://github.com/amazon-science/")
    assert f"nctx{n_ctx}_" in filename and f"_ep{epochs}_" in filename  # the release's own naming
    for alias in (filename, filename[: -len(".pth.tar")]):
        assert pretrained.pretrained_info(alias) is entry


def test_list_and_unknown_names():
    assert pomp_core.list_pretrained() == list(TABLE)
    with pytest.raises(KeyError, match="unknown pretrained prompt 'pomp-vit-b16-ctx8'.*close: pomp-vit-b16-ctx4"):
        pretrained.pretrained_info("pomp-vit-b16-ctx8")
    with pytest.raises(FileNotFoundError, match="does not exist, nor is it the name of a published prompt"):
        pomp_core.load_prompt("pomp-vit-b16-ctx8")


def test_download_then_cache_hit_without_network(server, cache, tmp_path, monkeypatch, caplog):
    body = release_file(tmp_path)
    server.files[f"/prompts/{B16_4}"] = body
    monkeypatch.setenv("POMP_PROMPT_MIRROR", server.url + "/prompts/")
    with caplog.at_level(logging.INFO):
        prompt = pomp_core.load_prompt("pomp-vit-b16-ctx4")
    assert server.requests == [f"/prompts/{B16_4}"]
    torch.testing.assert_close(prompt.ctx.data, expected_ctx(), atol=0, rtol=0)
    assert (prompt.n_ctx, prompt.position, prompt.class_specific, prompt.model_name) == \
        (4, "end", False, "ViT-B-16-quickgelu")
    assert [p.name for p in cache.iterdir()] == [B16_4]  # no temporary left beside it
    assert (cache / B16_4).read_bytes() == body
    assert f"download {B16_4}: {len(body)}/{len(body)} B (100%)" in caplog.text  # the progress line
    assert hashlib.sha256(body).hexdigest() in caplog.text  # logged, to pin it

    # the cache answers without the network: the download address now refuses connections
    monkeypatch.setenv("POMP_PROMPT_MIRROR", closed_port_url())
    again = pomp_core.load_prompt(B16_4)  # the release's file name is an alias
    torch.testing.assert_close(again.ctx.data, expected_ctx(), atol=0, rtol=0)
    assert len(server.requests) == 1


def test_corrupted_downloads_are_refused(server, cache, tmp_path, monkeypatch):
    good = release_file(tmp_path)
    monkeypatch.setenv("POMP_PROMPT_MIRROR", server.url)
    for body, why in [(good[: len(good) // 2], r"is not a torch file \(cut short"),
                      (b"<html>Google Drive</html>", "is not a torch file"),  # a web page
                      (release_file(tmp_path, n_ctx=16), r"has state_dict\['ctx'\] of shape \(16, 512\), not \(4, 512\)")]:
        server.files[f"/{B16_4}"] = body
        with pytest.raises(ValueError, match=f"refused the download of 'pomp-vit-b16-ctx4' from {server.url}/"
                                             f"{B16_4}: the file {why}"):
            pretrained.fetch_prompt("pomp-vit-b16-ctx4")
        assert list(cache.iterdir()) == []  # nothing kept, not even the temporary

    # a connection that drops before the announced length: a failed download, nothing kept
    server.files[f"/{B16_4}"], server.claimed[f"/{B16_4}"] = good[:1000], len(good)
    with pytest.raises(WeightsUnavailable, match=f"ConnectionError: the connection closed after 1000 of {len(good)} "):
        pretrained.fetch_prompt("pomp-vit-b16-ctx4")
    assert list(cache.iterdir()) == []
    del server.claimed[f"/{B16_4}"]

    # where the table knows the sha256, a well-formed file with other values is refused too
    entry = dataclasses.replace(pretrained.PROMPTS["pomp-vit-b16-ctx4"], sha256=hashlib.sha256(good).hexdigest())
    with_entry(monkeypatch, entry)
    server.files[f"/{B16_4}"] = release_file(tmp_path, seed=1)
    with pytest.raises(ValueError, match="the file has sha256 [0-9a-f]{64}, not " + entry.sha256):
        pretrained.fetch_prompt(entry.name)
    assert list(cache.iterdir()) == []
    server.files[f"/{B16_4}"] = good
    assert pretrained.fetch_prompt(entry.name) == cache / B16_4

    # an answer far larger than a prompt is cut off while it streams
    with_entry(monkeypatch, dataclasses.replace(entry, max_size=1000))
    (cache / B16_4).unlink()
    with pytest.raises(ValueError, match="sends more than 1000 bytes"):
        pretrained.fetch_prompt(entry.name)


def test_offline_is_one_line_naming_the_file_to_place(cache, server, monkeypatch):
    for mirror, reason in [(closed_port_url(), "URLError"), (server.url + "/nothing", "HTTPError: Not Found")]:
        monkeypatch.setenv("POMP_PROMPT_MIRROR", mirror)
        with pytest.raises(WeightsUnavailable) as err:
            pomp_core.load_prompt("pomp-vit-b32-ctx16")
        entry = pretrained.PROMPTS["pomp-vit-b32-ctx16"]
        line = error_line(err.value)
        assert "\n" not in str(err.value) and reason in line
        assert f"place it as {cache / entry.filename}" in line and f"download {entry.url}" in line
        assert not cache.exists() or list(cache.iterdir()) == []


def test_hand_placed_files_are_checked(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("POMP_PROMPT_MIRROR", closed_port_url())
    cache.mkdir(parents=True)
    good = release_file(tmp_path)
    (cache / B16_4).write_bytes(good)
    torch.testing.assert_close(pomp_core.load_prompt("pomp-vit-b16-ctx4").ctx.data, expected_ctx(), atol=0, rtol=0)

    (cache / B16_4).write_bytes(good[:-100])  # a copy cut short
    with pytest.raises(ValueError, match=f"{cache / B16_4} is not a torch file .*: "
                                         "delete it to download it again, or replace it with the file from https://"):
        pomp_core.load_prompt("pomp-vit-b16-ctx4")

    entry = dataclasses.replace(pretrained.PROMPTS["pomp-vit-b16-ctx4"], sha256=hashlib.sha256(good).hexdigest())
    with_entry(monkeypatch, entry)
    (cache / B16_4).write_bytes(release_file(tmp_path, seed=2))  # well formed, another prompt
    with pytest.raises(ValueError, match=f"{cache / B16_4} has sha256 [0-9a-f]{{64}}, not {entry.sha256}: delete"):
        pomp_core.load_prompt("pomp-vit-b16-ctx4")
    (cache / B16_4).write_bytes(good)
    assert pomp_core.load_prompt("pomp-vit-b16-ctx4").n_ctx == 4

    # objects a safe load refuses: named, and read when the user says the file is trusted
    with_entry(monkeypatch, dataclasses.replace(entry, sha256=None))
    torch.save({"state_dict": {"ctx": expected_ctx()}, "note": pathlib.PurePosixPath("x")}, cache / B16_4)
    with pytest.raises(ValueError, match="holds objects that a safe load refuses .*pass trusted=True: delete"):
        pomp_core.load_prompt("pomp-vit-b16-ctx4")
    torch.testing.assert_close(pomp_core.load_prompt("pomp-vit-b16-ctx4", trusted=True).ctx.data, expected_ctx())


def test_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("POMP_CACHE", str(tmp_path))
    assert pretrained.cache_dir() == tmp_path / "prompts"
    monkeypatch.delenv("POMP_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert pretrained.cache_dir() == tmp_path / "home" / ".cache" / "pomp" / "prompts"
    entry = pretrained.PROMPTS["pomp-vit-b32-ctx4"]
    monkeypatch.delenv("POMP_PROMPT_MIRROR", raising=False)
    assert pretrained.download_url(entry) == entry.url
    monkeypatch.setenv("POMP_PROMPT_MIRROR", "http://mirror.lan/pomp/")
    assert pretrained.download_url(entry) == "http://mirror.lan/pomp/" + entry.filename


def test_a_cut_prompt_file_is_one_clear_error(tmp_path):
    path = tmp_path / "cut.pth.tar"
    path.write_bytes(release_file(tmp_path)[:-100])  # torch's zip reader raises OSError on it
    with pytest.raises(ValueError, match="is not a readable torch file"):
        pomp_core.load_prompt(path)

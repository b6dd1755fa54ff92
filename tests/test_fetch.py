"""jetjax.data.fetch against a local HTTP server on 127.0.0.1 (never the real hosts): checksums, resumed and
restarted transfers, errors that say what to do, skipping complete files, and the layout the readers discover."""
import errno
import hashlib
import io
import socket
import tarfile
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow.parquet as pq
import pytest

from jetjax.data import fetch, pipeline, synthetic
from jetjax.data.classes import get_scheme
from jetjax.data.catalogue import RemoteFile
from jetjax.data.fetch import ChecksumError, DiskFullError, FetchError
from jetjax.data.readers import JETCLASS2_SPLIT_RANGES, SPLIT_FOLDERS, discover_files


class Server:
    """Serves `files` (URL path -> bytes) with Range support; `ignore_range` paths answer Range requests with the
    whole file, `cut` paths send only that many bytes of their first response and drop the connection."""

    def __init__(self):
        self.files, self.ignore_range, self.cut, self.requests = {}, set(), {}, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                if self.path not in server.files:
                    return self.send_error(404)
                body, start = server.files[self.path], 0
                asked = self.headers.get("Range")
                if asked and self.path not in server.ignore_range:
                    start = int(asked.removeprefix("bytes=").rstrip("-"))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        return self.end_headers()
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                stop = start + server.cut.pop(self.path) if self.path in server.cut else len(body)
                self.wfile.write(body[start:stop])

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_port}"
        threading.Thread(target=self.http.serve_forever, args=(0.01,), daemon=True).start()

    def add(self, path, body):
        self.files[path] = body
        return self.url + path


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(fetch, "RETRY_WAIT_S", 0.0)
    served = Server()
    yield served
    served.http.shutdown()
    served.http.server_close()


def payload(n=50_000, seed=0):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def md5(body):
    return "md5", hashlib.md5(body).hexdigest()


def served_file(server, name="a.bin", body=None, checksum="right"):
    body = payload() if body is None else body
    url = server.add(f"/files/{name}", body)
    return RemoteFile(name, url, md5(body) if checksum == "right" else checksum), body


def test_checksum_ok_lands_under_final_name(server, tmp_path):
    file, body = served_file(server)
    path = fetch.download_file(file, tmp_path, progress=False)
    assert path == tmp_path / "a.bin" and path.read_bytes() == body
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_wrong_checksum_keeps_the_download_aside(server, tmp_path):
    wrong = ("md5", "0" * 32)
    file, body = served_file(server, checksum=wrong)
    with pytest.raises(ChecksumError) as error:
        fetch.download_file(file, tmp_path, progress=False)
    message = str(error.value)
    assert "a.bin" in message and "0" * 32 in message and hashlib.md5(body).hexdigest() in message
    assert not (tmp_path / "a.bin").exists() and not (tmp_path / "a.bin.part").exists()
    assert (tmp_path / "a.bin.bad").read_bytes() == body


def test_interrupted_transfer_resumes_with_a_range_request(server, tmp_path):
    file, body = served_file(server)
    server.cut["/files/a.bin"] = 12_345
    path = fetch.download_file(file, tmp_path, retries=1, progress=False)
    assert path.read_bytes() == body
    assert server.requests == [("/files/a.bin", None), ("/files/a.bin", "bytes=12345-")]


def test_interrupted_transfer_without_retries_is_resumed_by_a_rerun(server, tmp_path):
    file, body = served_file(server)
    server.cut["/files/a.bin"] = 20_000
    with pytest.raises(FetchError, match="rerun the same command to resume"):
        fetch.download_file(file, tmp_path, retries=0, progress=False)
    assert not (tmp_path / "a.bin").exists()
    assert (tmp_path / "a.bin.part").read_bytes() == body[:20_000]
    fetch.download_file(file, tmp_path, retries=0, progress=False)
    assert (tmp_path / "a.bin").read_bytes() == body and server.requests[-1] == ("/files/a.bin", "bytes=20000-")


def test_server_that_ignores_range_restarts_from_byte_zero(server, tmp_path, capsys):
    file, body = served_file(server)
    server.ignore_range.add("/files/a.bin")
    (tmp_path / "a.bin.part").write_bytes(b"stale bytes of another file")  # appending to these would fail the md5
    fetch.download_file(file, tmp_path, progress=False)
    assert (tmp_path / "a.bin").read_bytes() == body
    assert server.requests == [("/files/a.bin", "bytes=27-")] and "ignored the Range request" in capsys.readouterr().err


def test_whole_partial_file_is_completed_without_a_new_body(server, tmp_path):
    file, body = served_file(server)
    (tmp_path / "a.bin.part").write_bytes(body)  # a crash after the last byte, before the rename
    fetch.download_file(file, tmp_path, progress=False)
    assert (tmp_path / "a.bin").read_bytes() == body and server.requests == [("/files/a.bin", f"bytes={len(body)}-")]


def test_no_network_says_what_to_do(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    file = RemoteFile("a.bin", f"http://127.0.0.1:{port}/files/a.bin", ("md5", "0" * 32))
    with pytest.raises(FetchError, match=r"cannot reach 127\.0\.0\.1.*check the network connection"):
        fetch.download_file(file, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_http_error_names_the_url(server, tmp_path):
    file = RemoteFile("gone.bin", server.url + "/files/gone.bin", ("md5", "0" * 32))
    with pytest.raises(FetchError, match=r"HTTP 404 .*/files/gone\.bin"):
        fetch.download_file(file, tmp_path, progress=False)


def test_complete_file_is_skipped_and_verify_rehashes_it(server, tmp_path):
    file, body = served_file(server)
    fetch.download_file(file, tmp_path, progress=False)
    fetch.download_file(file, tmp_path, progress=False)
    fetch.download_file(file, tmp_path, verify=True, progress=False)
    assert len(server.requests) == 1
    (tmp_path / "a.bin").write_bytes(body[:-1] + b"x")
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        fetch.download_file(file, tmp_path, verify=True, progress=False)
    assert not (tmp_path / "a.bin").exists() and (tmp_path / "a.bin.bad").exists()


def test_no_published_checksum_is_reported(server, tmp_path, capsys):
    file, body = served_file(server, checksum=None)
    assert fetch.download_file(file, tmp_path, progress=False).read_bytes() == body
    assert "a.bin: no published checksum" in capsys.readouterr().err


def test_disk_full_before_the_transfer(server, tmp_path, monkeypatch):
    file, _ = served_file(server)
    monkeypatch.setattr(fetch.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 1000})())
    with pytest.raises(DiskFullError, match=r"needs .* but .* has .* free: free some space"):
        fetch.download_file(file, tmp_path, progress=False)
    assert not (tmp_path / "a.bin").exists()


def test_disk_full_while_writing_keeps_the_part_to_resume(server, tmp_path, monkeypatch):
    file, body = served_file(server)
    real_open = open

    class FullDisk(io.FileIO):
        def write(self, data):
            if self.tell() + len(data) > 30_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    def open_on_full_disk(path, mode="r"):  # the module's open(): its writes hit a disk with 30 kB free
        return FullDisk(path, mode.replace("b", "")) if mode in ("wb", "ab") else real_open(path, mode)

    monkeypatch.setattr(fetch, "open", open_on_full_disk, raising=False)
    monkeypatch.setattr(fetch, "CHUNK", 10_000)
    with pytest.raises(DiskFullError, match="free some space .* resumes from .*a.bin.part"):
        fetch.download_file(file, tmp_path, progress=False)
    assert (tmp_path / "a.bin.part").read_bytes() == body[:30_000] and not (tmp_path / "a.bin").exists()
    monkeypatch.delattr(fetch, "open")
    fetch.download_file(file, tmp_path, progress=False)
    assert (tmp_path / "a.bin").read_bytes() == body and server.requests[-1][1] == "bytes=30000-"


def tarball(members):
    """A tar archive (bytes) holding `members` (name -> bytes)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


def jetclass_with(server, part_name, archive):
    """The real JetClass catalogue entry of `part_name`, its archive served by `server` (md5 of `archive`)."""
    dataset = fetch.DATASETS["JetClass"]
    part = dataset.parts[part_name]
    file = part.files[0]
    served = replace(file, url=server.add("/" + file.url.split("/", 3)[3], archive), checksum=md5(archive))
    return replace(dataset, parts={part_name: replace(part, files=(served,))}, default=(part_name,))


def test_jetclass_tarball_unpacks_into_the_split_folder_the_readers_discover(server, tmp_path, capsys):
    archive = tarball({"val_5M/HToBB_120.root": payload(3000, 1), "val_5M/ZToQQ_120.root": payload(2000, 2),
                       "val_5M/README.txt": b"notes"})
    dataset = jetclass_with(server, "val", archive)
    paths = fetch.fetch(dataset, tmp_path, progress=False)
    root = tmp_path / "JetClass"
    assert sorted(p.name for p in paths) == ["HToBB_120.root", "ZToQQ_120.root"]
    assert (root / "val_5M" / "HToBB_120.root").read_bytes() == payload(3000, 1)
    assert discover_files(root, "val") == {"HToBB": [root / "val_5M/HToBB_120.root"],
                                           "ZToQQ": [root / "val_5M/ZToQQ_120.root"]}
    assert "1 non-data member(s) not unpacked: ['val_5M/README.txt']" in capsys.readouterr().err
    assert not (root / ".fetch" / "JetClass_Pythia_val_5M.tar").exists()  # deleted once unpacked
    fetch.fetch(dataset, tmp_path, progress=False)  # the marker says it is done: no new request
    assert len(server.requests) == 1


def test_failed_extraction_leaves_nothing_that_looks_complete(server, tmp_path):
    archive = tarball({"a/HToBB_000.root": b"one", "b/HToBB_000.root": b"two"})
    with pytest.raises(FetchError, match=r"named twice \['HToBB_000.root'\]"):
        fetch.fetch(jetclass_with(server, "train0", archive), tmp_path, progress=False)
    work = tmp_path / "JetClass" / ".fetch"
    assert not (tmp_path / "JetClass" / "train_100M").exists()
    assert sorted(p.name for p in work.iterdir()) == ["JetClass_Pythia_train_100M_part0.tar"]  # no marker, no staging


def pointer(body):
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(body).hexdigest()}\n"
            f"size {len(body)}\n").encode()


def serve_jetclass2(server, names, bodies=None, pointers=None):
    """Serve JetClass-II files under their Hugging Face paths with LFS pointers (of `pointers`, by default of
    the generated payloads, so that other `bodies` mismatch them)."""
    for index, name in enumerate(names):
        body = payload(4000, index) if bodies is None else bodies[index]
        server.add(f"/datasets/jet-universe/jetclass2/resolve/main/data/{name}", body)
        server.add(f"/datasets/jet-universe/jetclass2/raw/main/data/{name}",
                   pointer(payload(4000, index)) if pointers is None else pointers[index])


def test_jetclass2_from_the_catalogue_lands_where_the_readers_split_it(server, tmp_path):
    names = ["Res2P_0200.parquet", "Res2P_0201.parquet", "QCD_0280.parquet", "QCD_0281.parquet"]
    serve_jetclass2(server, names)
    paths = fetch.fetch("JetClass-II", tmp_path, ["Res2P-val", "QCD-val"], max_files=2, mirror=server.url,
                        progress=False)
    root = tmp_path / "JetClass-II"
    assert paths == [root / name for name in names]
    assert discover_files(root, "val") == {"Res2P": paths[:2], "QCD": paths[2:]}
    assert (root / "QCD_0281.parquet").read_bytes() == payload(4000, 3)
    with pytest.raises(FileNotFoundError, match="no train files"):
        discover_files(root, "train")


def test_fetched_jetclass2_root_feeds_the_pipeline(server, tmp_path):
    """data.root = OUT/JetClass-II works as fetched: the val stream reads every jet of the served files."""
    written = synthetic.write_dataset(tmp_path / "source", jets_per_group=100)
    served = {"Res2P_0200.parquet": "Res2P", "Res34P_0860.parquet": "Res34P", "QCD_0280.parquet": "QCD"}
    sources = {name: next(p for p in written if p.parent.name == "val" and p.name.startswith(group + "_"))
               for name, group in served.items()}
    serve_jetclass2(server, list(served), [sources[name].read_bytes() for name in served],
                    pointers=[pointer(sources[name].read_bytes()) for name in served])
    fetch.fetch("JetClass-II", tmp_path / "out", ["val"], max_files=1, mirror=server.url, progress=False)
    root = tmp_path / "out" / "JetClass-II"
    batches = pipeline.test_batches(root, split="val", num_particles=16, batch_size=8)
    labels = np.concatenate([batch["label"] for batch in batches])
    raw = np.concatenate([pq.read_table(sources[name], columns=["jet_label"])["jet_label"] for name in served])
    classes = get_scheme("jetclass2_7").class_index(raw)
    assert len(labels) >= 20 and len(set(labels)) >= 4
    np.testing.assert_array_equal(np.sort(labels), np.sort(classes[classes >= 0]))


def test_jetclass2_pointer_checksum_mismatch(server, tmp_path):
    serve_jetclass2(server, ["Res2P_0200.parquet"], bodies=[b"not the published bytes"])
    with pytest.raises(ChecksumError, match=r"Res2P_0200\.parquet: sha256 checksum mismatch"):
        fetch.fetch("JetClass-II", tmp_path, ["Res2P-val"], max_files=1, mirror=server.url, progress=False)
    assert [p.name for p in (tmp_path / "JetClass-II").iterdir()] == ["Res2P_0200.parquet.bad"]


def test_jetclass2_parts_are_the_file_index_splits_of_the_readers(tmp_path):
    dataset = fetch.DATASETS["JetClass-II"]
    for name in (f.name for part in dataset.parts.values() for f in part.files):
        (tmp_path / name).touch()
    published = sum(last - first + 1 for ranges in JETCLASS2_SPLIT_RANGES.values() for first, last in ranges.values())
    assert len(list(tmp_path.iterdir())) == published == 2010
    for split in SPLIT_FOLDERS:
        parts = fetch.select_parts(dataset, [split])
        expected = {f.name for p in parts for f in dataset.parts[p].files}
        assert {p.name for paths in discover_files(tmp_path, split).values() for p in paths} == expected


def test_catalogue_checksums_parts_and_aliases():
    lengths = {"md5": 32, "sha256": 64}
    for dataset in fetch.DATASETS.values():
        names = [f.name for part in dataset.parts.values() for f in part.files]
        assert len(names) == len(set(names)), dataset.name
        for file in (f for part in dataset.parts.values() for f in part.files):
            assert file.url.startswith("https://") and file.url.split("?")[0].endswith("/" + file.name)
            assert file.pointer_url or len(file.checksum[1]) == lengths[file.checksum[0]], file.name
            int(file.checksum[1] if file.checksum else "0", 16)
    jetclass = fetch.DATASETS["JetClass"]
    assert {p.folder for p in jetclass.parts.values()} == {names[-1] for names in SPLIT_FOLDERS.values()}
    assert fetch.select_parts(jetclass, ["val", "train", "train3"]) == ["val"] + [f"train{i}" for i in range(10)]
    assert fetch.select_parts(fetch.DATASETS["QuarkGluon"]) == ["nobc-train", "nobc-val", "nobc-test"]
    with pytest.raises(ValueError, match="JetClass has no part 'tarin'.*aliases: all, train"):
        fetch.select_parts(jetclass, ["tarin"])


@pytest.mark.parametrize("name", ["TopLandscape", "QuarkGluon", "JetClass-II"])
def test_fetched_layout_is_what_the_readers_discover(tmp_path, name):
    """Every fetched data file lands where readers.discover_files finds it for its own split, and only there."""
    dataset = fetch.DATASETS[name]
    expected = {}
    for part_name in fetch.select_parts(dataset, [dataset.default[0]]):
        part = dataset.parts[part_name]
        split = part_name.split("-")[-1]    # train, Res2P-train, nobc-train
        for file in part.files:
            path = tmp_path / dataset.name / part.folder / file.name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            expected.setdefault(split, set()).add(path)
    for split in ("train", "val", "test"):
        found = {p for paths in discover_files(tmp_path / dataset.name, split).values() for p in paths}
        assert found == expected[split], (name, split)


def test_command_line(server, tmp_path, capsys):
    assert fetch.main(["--list", "TopLandscape"]) == 0
    listing = capsys.readouterr().out
    assert "https://zenodo.org/record/2603256/files/train.h5  [md5 45663819f47c13724f67eb0fd80bfa5c]" in listing
    assert fetch.main(["JetClass-II", "--out", str(tmp_path), "--parts", "nope"]) == 1
    assert "error: JetClass-II has no part 'nope'" in capsys.readouterr().err
    serve_jetclass2(server, ["QCD_0350.parquet"])
    assert fetch.main(["JetClass-II", "--out", str(tmp_path), "--parts", "QCD-test", "--max-files", "1",
                       "--mirror", server.url]) == 0
    assert "use --config.data.root=" + str(tmp_path / "JetClass-II") in capsys.readouterr().out
    assert discover_files(tmp_path / "JetClass-II", "test") == {"QCD": [tmp_path / "JetClass-II/QCD_0350.parquet"]}

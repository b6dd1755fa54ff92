"""Download the public jet datasets from their publishers' hosts, checked against the published checksums.

    python -m jetjax.data.fetch --list                               # the catalogue: parts, sources, URLs
    python -m jetjax.data.fetch JetClass --out DIR --parts val,test  # JetClass v1 tarballs, unpacked
    python -m jetjax.data.fetch JetClass-II --out DIR --parts Res2P-val --max-files 2
    fetch("JetClass-II", "DIR", parts=["val"])                        # the same from Python

Layout (what `readers.discover_files` finds, so `--config.data.root` points straight at it):
- JetClass:     DIR/JetClass/{train_100M,val_5M,test_20M}/*.root -> --config.data.root=DIR/JetClass
                (with --config.data.scheme=jetclass_10)
- JetClass-II:  DIR/JetClass-II/{Res2P,Res34P,QCD}_NNNN.parquet, flat, split by file index as published
                -> --config.data.root=DIR/JetClass-II
- TopLandscape: DIR/TopLandscape/{train,val,test}.h5 -> --config.data.root=DIR/TopLandscape
                (with --config.data.scheme=top_landscape --config.data.feature_set=kin)
- QuarkGluon:   DIR/QuarkGluon/{train,val,test}/QG_jets*.npz (energyflow's 16/2/2-file split; withbc under
                DIR/QuarkGluon/withbc/) -> --config.data.root=DIR/QuarkGluon --config.data.scheme=quark_gluon

A file streams to NAME.part; a retry or a rerun resumes it with an HTTP Range request (from byte 0 when the
server ignores Range). The whole file is checked against its published checksum and only then renamed to
NAME, so a file under its final name has been verified: reruns skip it (`verify` re-hashes it). A mismatch
moves the download to NAME.bad and raises ChecksumError naming expected and got.
Archives (JetClass) download to DIR/<dataset>/.fetch/; their data files are unpacked into a staging folder
there, then moved into the split folder one by one (a data file is there whole or not at all); a marker
written last records a finished archive, which is then deleted (`keep_archives` keeps it).
"""
import argparse
import errno
import hashlib
import http.client
import json
import os
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tqdm import tqdm

from jetjax.data.catalogue import DATASETS, Dataset, get_dataset, select_parts
from jetjax.data.readers import FORMATS

USER_AGENT = "jetjax-fetch/0.1"
TIMEOUT_S = 60
RETRY_WAIT_S = 5.0
CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A download failed: the message names the file and says what to do."""


class ChecksumError(FetchError):
    """A downloaded file differs from its published checksum (it is kept as NAME.bad)."""


class DiskFullError(FetchError):
    """No space left for a download or an extraction."""


def _mirrored(url, mirror):
    """`url` on the host `mirror` (same path), e.g. a local copy of the hosts; `url` itself without one."""
    if not mirror:
        return url
    host, original = urlsplit(mirror), urlsplit(url)
    return urlunsplit((host.scheme, host.netloc, host.path.rstrip("/") + original.path, original.query, ""))


def _human(n):
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _check_free_space(folder, needed, what):
    free = shutil.disk_usage(folder).free
    if needed is not None and needed > free:
        raise DiskFullError(f"{what} needs {_human(needed)} but {folder} has {_human(free)} free: free some space "
                            f"(or choose another --out) and rerun the same command")


def _open(url, start=0):
    """The server's response to a GET of `url` from byte `start` (a Range request when start > 0); an HTTP 416
    (range not satisfiable) comes back as the response, other failures raise FetchError."""
    headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={start}-"} if start else {})}
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416:
            return error
        raise FetchError(f"HTTP {error.code} {error.reason} for {url}: the file may have moved or the host may be "
                         f"down; check the dataset's page (python -m jetjax.data.fetch --list) or retry later"
                         ) from error
    except OSError as error:  # URLError (refused, unknown host), timeouts
        raise FetchError(f"cannot reach {urlsplit(url).netloc} for {url} ({getattr(error, 'reason', error)}): "
                         f"check the network connection (on a machine without internet access, fetch elsewhere "
                         f"and copy the folder, or pass --mirror)") from error


def published_checksum(file, mirror=None):
    """(algorithm, hex digest) published for `file`, None if none is; read from its LFS pointer when it has one."""
    if file.pointer_url is None:
        return file.checksum
    url = _mirrored(file.pointer_url, mirror)
    with _open(url) as response:
        text = response.read(1024).decode("utf-8", "replace")
    fields = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
    if not text.startswith("version https://git-lfs") or not fields.get("oid", "").startswith("sha256:"):
        raise FetchError(f"{url} is not a Git LFS pointer (it starts {text[:60]!r}), so the published sha256 of "
                         f"{file.name} is unknown: the host changed its layout; please report it")
    return "sha256", fields["oid"].split(":", 1)[1].strip()


def file_digest(path, algorithm):
    digest = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        while block := stream.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _stream(response, part, have, total, progress, label):
    """Write the response body to `part` after its first `have` bytes; IncompleteRead if it stops short."""
    written = have
    try:
        bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                   disable=not progress)
        with open(part, "ab" if have else "wb") as out, bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise DiskFullError(f"disk full while writing {part} ({written} of {total or '?'} bytes): free some space "
                                f"on {part.parent} and rerun the same command; the download resumes from {part}"
                                ) from error
        raise
    if total is not None and written < total:
        raise http.client.IncompleteRead(b"", total - written)


def _transfer(url, part, retries, progress, label):
    """Download `url` into `part`, resuming the bytes it holds, retrying a broken connection `retries` times."""
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        with _open(url, have) as response:
            if response.code == 416:
                if response.headers.get("Content-Range", "") == f"bytes */{have}":
                    return  # the partial file already holds the whole body
                raise FetchError(f"{url} refuses to resume {part} (HTTP 416): delete {part} and rerun")
            if have and response.code != 206:
                print(f"{label}: the server ignored the Range request: downloading from byte 0", file=sys.stderr)
                have = 0
            elif have and not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                raise FetchError(f"{url} answered the resume of {part} from byte {have} with "
                                 f"{response.headers.get('Content-Range')!r}: delete {part} and rerun")
            length = response.headers.get("Content-Length")
            total = None if length is None else have + int(length)
            _check_free_space(part.parent, None if total is None else total - have, f"downloading {part.name}")
            try:
                _stream(response, part, have, total, progress, label)
                return
            except (http.client.HTTPException, ConnectionError, TimeoutError, urllib.error.URLError) as error:
                received = part.stat().st_size
                if attempt == retries:
                    raise FetchError(f"{label}: the connection broke after {received} of {total or '?'} bytes "
                                     f"({error!r}), {retries} retries used: rerun the same command to resume from "
                                     f"{part}") from error
                print(f"{label}: the connection broke after {received} bytes ({error!r}); resuming "
                      f"(retry {attempt + 1} of {retries})", file=sys.stderr)
        time.sleep(RETRY_WAIT_S)


def _check(path, target, checksum, source):
    """Raise ChecksumError, moving `path` to TARGET.bad, unless `path` matches the published checksum."""
    if checksum is None:
        print(f"{target.name}: no published checksum: not verified (only its length, against the server's "
              f"Content-Length)", file=sys.stderr)
        return
    algorithm, expected = checksum
    got = file_digest(path, algorithm)
    if got != expected.lower():
        bad = target.with_name(target.name + ".bad")
        os.replace(path, bad)
        raise ChecksumError(f"{target}: {algorithm} checksum mismatch: expected {expected}, got {got} (from {source}); "
                            f"kept as {bad}: delete it and rerun to download again (a second mismatch means the "
                            f"host's file differs from the published checksum: report it)")


def download_file(file, folder, *, mirror=None, verify=False, retries=3, progress=True, label=None):
    """Download `file` to folder/NAME through NAME.part, verified before it gets its name; returns the path.
    A file already under its final name is skipped (with verify=True it is re-hashed first)."""
    target, label = Path(folder) / file.name, label or file.name
    if target.exists() and not verify:
        return target
    checksum = published_checksum(file, mirror)
    if target.exists():
        _check(target, target, checksum, "the file on disk")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part, url = target.with_name(target.name + ".part"), _mirrored(file.url, mirror)
    _transfer(url, part, retries, progress, label)
    _check(part, target, checksum, url)
    os.replace(part, target)
    return target


def extract_data_files(archive, folder, staging):
    """Unpack the data files (readers.FORMATS) of a tar archive, wherever they lie in it, into `folder`: first all
    into `staging`, then moved one by one, so `folder` only ever holds whole files. Other members are listed."""
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            data = [m for m in members if Path(m.name).suffix in FORMATS]
            names = [Path(m.name).name for m in data]
            twice = sorted(name for name, n in Counter(names).items() if n > 1)
            if not data or twice:
                raise FetchError(f"{archive}: {'no data files' if not data else f'data files named twice {twice}'} "
                                 f"in the archive: it is not the published one; delete it and rerun")
            others = [m.name for m in members if Path(m.name).suffix not in FORMATS]
            if others:
                print(f"{archive.name}: {len(others)} non-data member(s) not unpacked: {others[:5]}", file=sys.stderr)
            _check_free_space(staging, sum(m.size for m in data), f"unpacking {archive.name}")
            for member, name in zip(data, names):
                with tar.extractfile(member) as source, open(staging / name, "wb") as target:
                    shutil.copyfileobj(source, target, CHUNK)
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            os.replace(staging / name, folder / name)
    except tarfile.TarError as error:
        raise FetchError(f"{archive}: unreadable tar archive ({error}): delete it and rerun") from error
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise DiskFullError(f"disk full while unpacking {archive}: free some space and rerun") from error
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [folder / name for name in names]


def _fetch_archive(file, root, folder, keep_archive, **download_args):
    """The data files of archive `file` in `folder`: downloaded and unpacked unless its marker says it was."""
    work = root / ".fetch"
    marker = work / f"{file.name}.extracted"
    if marker.exists():
        paths = [folder / name for name in json.loads(marker.read_text())["files"]]
        if all(p.exists() for p in paths):
            return paths
        print(f"{file.name}: files listed in {marker} are missing: fetching the archive again", file=sys.stderr)
    archive = download_file(file, work, **download_args)
    paths = extract_data_files(archive, folder, work / f"{file.name}.staging")
    marker.with_suffix(".tmp").write_text(json.dumps({"archive": file.name, "files": [p.name for p in paths]}))
    os.replace(marker.with_suffix(".tmp"), marker)
    if not keep_archive:
        archive.unlink()
    return paths


def fetch(dataset, out, parts=None, *, max_files=None, mirror=None, verify=False, keep_archives=False, retries=3,
          progress=True):
    """Download `parts` (names or aliases; default: the dataset's default) of `dataset` (a name of DATASETS or a
    Dataset) into OUT/<dataset name>/ in the layout of the module docstring; `max_files` keeps the first files of
    each part; `verify` re-hashes files already complete (an unpacked archive is recorded by its marker and not
    re-checked). Returns the data files in place."""
    dataset = dataset if isinstance(dataset, Dataset) else get_dataset(dataset)
    if max_files is not None and max_files < 1:
        raise ValueError(f"max_files={max_files}: give at least 1 (or None for every file)")
    root = Path(out) / dataset.name
    jobs = [(part, f) for name in select_parts(dataset, parts) for part in [dataset.parts[name]]
            for f in part.files[:max_files]]
    paths = []
    for index, (part, file) in enumerate(jobs, 1):
        args = dict(mirror=mirror, verify=verify, retries=retries, progress=progress,
                    label=f"[{index}/{len(jobs)}] {file.name}")
        if part.archive:
            paths += _fetch_archive(file, root, root / part.folder, keep_archives, **args)
        else:
            paths.append(download_file(file, root / part.folder, **args))
    print(f"{dataset.name}: {len(paths)} data files under {root}; use {dataset.use.format(root=root)}")
    return paths


def describe(dataset, files_shown=1):
    """The catalogue entry of `dataset` as text: parts, aliases, URLs, checksums and where they come from."""
    lines = [f"{dataset.name} -> OUT/{dataset.name}/  ({dataset.source})",
             f"  use: {dataset.use.format(root=f'OUT/{dataset.name}')}",
             f"  default: {', '.join(dataset.default)}; 'all' = every part"]
    lines += [f"  alias {alias}: {' '.join(parts)}" for alias, parts in dataset.aliases.items()]
    for name, part in dataset.parts.items():
        sizes = [f.size for f in part.files]
        size = f", {_human(sum(sizes))}" if None not in sizes else ""
        lines.append(f"  {name}: {len(part.files)} file(s) -> {part.folder or '.'}/{size}  {part.about}")
        for file in part.files[:files_shown]:
            checksum = (f"{file.checksum[0]} {file.checksum[1]}" if file.checksum else
                        f"sha256 in {file.pointer_url}" if file.pointer_url else "no published checksum")
            lines.append(f"      {file.url}  [{checksum}]")
        if len(part.files) > files_shown:
            lines.append(f"      ... {len(part.files) - files_shown} more")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m jetjax.data.fetch", description=__doc__.split("\n")[0])
    parser.add_argument("name", nargs="?", help=f"dataset: {', '.join(DATASETS)}")
    parser.add_argument("--out", help="folder that receives <name>/ (the layout of --config.data.root)")
    parser.add_argument("--parts", help="comma-separated parts or aliases (see --list); default: the dataset's")
    parser.add_argument("--list", action="store_true", help="print the catalogue (of NAME only, if given)")
    parser.add_argument("--max-files", type=int, help="only the first N files of each part (a trial download)")
    parser.add_argument("--verify", action="store_true", help="re-hash files that are already complete")
    parser.add_argument("--keep-archives", action="store_true", help="keep JetClass tarballs after unpacking")
    parser.add_argument("--mirror", help="base URL of a mirror holding the hosts' files under the same paths")
    parser.add_argument("--retries", type=int, default=3, help="retries of a broken connection per file")
    args = parser.parse_args(argv)
    try:
        if args.list:
            print("\n\n".join(describe(get_dataset(n)) for n in ([args.name] if args.name else DATASETS)))
            return 0
        if not args.name or not args.out:
            parser.error("give a dataset NAME and --out DIR (or --list)")
        fetch(args.name, args.out, args.parts.split(",") if args.parts else None, max_files=args.max_files,
              mirror=args.mirror, verify=args.verify, keep_archives=args.keep_archives, retries=args.retries)
    except (FetchError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
- TopLandscape: DIR/TopLandscape/{train,val,test}.h5 and QuarkGluon: DIR/QuarkGluon/QG_jets*.npz, the
  publishers' files as they are (no reader of this project reads them yet).

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
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tqdm import tqdm

from jetjax.data.classes import JETCLASS2_7
from jetjax.data.readers import FORMATS, JETCLASS2_SPLIT_RANGES

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


@dataclass(frozen=True)
class RemoteFile:
    name: str
    url: str
    checksum: tuple = None
    """(hashlib algorithm, hex digest) published for the file; None where none is published."""
    size: int = None
    """Bytes, where published (for the listing; transfers follow the server's Content-Length)."""
    pointer_url: str = None
    """The file's Git LFS pointer (Hugging Face): the sha256 it holds is the published checksum."""


@dataclass(frozen=True)
class Part:
    files: tuple
    folder: str = ""
    """Folder of the part's data files, inside the dataset's folder."""
    archive: bool = False
    """The files are tar archives whose data files are unpacked into `folder`."""
    about: str = ""


@dataclass(frozen=True)
class Dataset:
    name: str
    """Also the name of its folder under --out."""
    parts: dict
    default: tuple
    """Parts (or aliases) fetched when none are named."""
    aliases: dict
    """Alias -> part names ('all' is always there)."""
    source: str
    use: str
    """How to train on the files once fetched ({root}: the dataset's folder)."""


def _zenodo(record, name):
    return f"https://zenodo.org/record/{record}/files/{name}"


# JetClass (Qu, Li, Qian 2022), Zenodo record 6619768, https://doi.org/10.5281/zenodo.6619768. URLs and md5 sums
# from get_datasets.py of github.com/jet-universe/particle_transformer (commit b69aaf89, the authors' downloader);
# other public scripts quote the same md5 sums as "MD5 checksums from Zenodo". Sizes (~15.2 GB per train part,
# 7.6 GB val, 30.4 GB test) are third-party figures; Zenodo lists the exact ones.
_JETCLASS_TRAIN_MD5 = (
    "de4fd2dca2e68ab3c85d5cfd3bcc65c3", "9722a359c5ef697bea0fbf79bf50f003", "1e9f66cd1f915f9d10e90ae1d7761720",
    "47348fc8985319fa4806da87500482fa", "6b0ce16bd93b442a8d51914466990279", "416e347512e716de51d392bee327b8e9",
    "e9b9c1557b1b39bf0a16e4ab631ae451", "5bfc6cb285ccb7680cefa9ac82ad1a2e", "540c1a0d66dfad78d2b363c5740ccf86",
    "668f40b3275167ff7104c48317c0ae2a")
_JETCLASS_VAL_MD5 = "7235ccb577ed85023ea3ab4d5e6160cf"
_JETCLASS_TEST_MD5 = "64e5156d26d101adeb43b8388207d767"

# JetClass-II (Li et al. 2024, arXiv:2405.12972; github.com/jet-universe/sophon links it): Hugging Face dataset
# jet-universe/jetclass2. URLs as in its filelist.txt (https://huggingface.co/datasets/jet-universe/jetclass2/
# raw/main/filelist.txt: .../resolve/main/data/Res2P_0000.parquet, ...); file-index splits from its dataset card
# (readers.JETCLASS2_SPLIT_RANGES). The Hub publishes each file's sha256 and size in its Git LFS pointer
# (.../raw/main/data/NAME); no skimmed subset is published (skim locally: python -m jetjax.data.pipeline).
_HF_JETCLASS2 = "https://huggingface.co/datasets/jet-universe/jetclass2/{kind}/main/data/{name}"

# Top Landscape: the top tagging reference dataset (Kasieczka, Plehn, Thompson, Russel 2019), Zenodo record
# 2603256, https://doi.org/10.5281/zenodo.2603256. md5 sums and byte sizes of the record's files as quoted by
# public download scripts (two independent ones agree; the record page itself was not readable here).
_TOP_LANDSCAPE = {"train": ("45663819f47c13724f67eb0fd80bfa5c", 1_038_496_555),
                  "val": ("dca4b7248027618f041f9baa86d360fc", 347_378_076),
                  "test": ("13163479dee30a5fe546e4536cc3d04d", 347_849_376)}

# Quark-gluon: Pythia 8 quark and gluon jets for energy flow (Komiske, Metodiev, Thaler 2019), Zenodo record
# 3164691, https://doi.org/10.5281/zenodo.3164691. File names, record and sha256 sums from energyflow/data/
# qg_jets.json of github.com/thaler-lab/EnergyFlow (commit 00e15afe; the package's own downloader checks them).
_QG_FILES = {"nobc": ["QG_jets.npz"] + [f"QG_jets_{i}.npz" for i in range(1, 20)],
             "withbc": [f"QG_jets_withbc_{i}.npz" for i in range(20)]}
_QG_SHA256 = {"nobc": """
3f27a02eab06e8b83ccc9d25638021e6e24c9361341730961f9d560dee12c257
648e49cd59b5353e0064e7b1a3388d9c2f4a454d3ca67afaa8d0344c836ecb35
09f7b16fa7edb312c0f652bb8504de45f082c4193df65204d693155017272fe9
7dc9a50bb38e9f6fc1f11db18f9bd04f72823c944851746b848dee0bba808537
3e6217aad8e0502f5ce3b6371c61396dfc48a6cf4f26ee377cc7b991b1d2b543
b5b7d742b2599bcbe1d7a639895bca64c28da513dc3620b0e5bbb5801f8c88fd
7d31bc48c15983401e0dbe8fd5ee938c3809d9ee3c909f4adab6daf8b73c14f1
cec0d7b2afa9d955543c597f9b7f3b3767812a68b2401ec870caf3a2ceb98401
e984620f57abe06fc5d0b063f9f84ba54bd3e8c295d2b2419a7b1c6175079ed4
6e3b69196995d6eb3b8e7af874e2b9f93d904624f7a7a73b8ff39f151e3bd189
fa3d386f230b806058ff17e5bd77326ff4bf01d72aa5eb3325c1df2a8825927c
acd49ab7bea8f72ecf699a9a898bccacc8730474259d68406656a5a43d407fb0
2edd55b8bc30c686a0637855e1ba068586eb97041e8114d5540d96db2a7a2e17
7276a8a0e573f9795a47f9d5addc10d2af903c2a0ffa5c848a720ccae93daa90
2068ecfa912e94cd3ce7273b7c77af0bbd5ec57940997e7483b56f03434a6869
41a732ce6321dd593214225b03fb87329607ccae768c705e3896ffecc28bfcca
9d68caeb18f3ccf127b9032f52e63ee011c4381293a3a503f894e5c0741ae215
086053ca611bb04d97fa0b6509b4ffb6955421b067c7b277498f0e5188879331
cdc595f5fedef7db9411a9f93f2786f110073b4d17a523700f625846588b1e44
d07781139320ae134ce4824bc0cefa43fd5003cd97cdf3aed90d4fb12fad8a1d
""".split(), "withbc": """
27978b5dfe38f860f9899a4213f115579766ece0f6b3cd1cc043f57483521f9c
bec3a147167ac19f243d74c5c47097a716cee6f6af4edc16fd0b50003ec48bd7
878e415001682fda5493f15f2aaa29bce3d60b5dd882f85d85f66f2e8c5ddf9d
e6f48b8fa5dfb3fa914db5dbcabe6d972d803571aa5586babececa86007d0064
e11f885b97b7e859792b3f0a748f15e89c8e8788d68d1256931c948b745945e1
9598efe81b4d1f5f56049508da23957fd5c90590a242f7e58255aaa44d23c192
1de06fccea886445cc4250aba8e3c10990ccb24d4ae6416c6f1f40811117c13e
df6d44f5c37e5c1bf6a8c7cbfb9633413348c908b5f0c657ec32e8dde781ca95
fa6a01f90cdf3394b77bdec7e1931b2dfa4d6670ad8fbc0266eb14c352456e93
e8c7545edb1bc52a0ea0b6cf8541a3ab825970c337458e5c43402c13939e949d
147a6f80eb191577092c3bc404c90ab5538e2887b23f27d6e91e3643c5a18119
c1068b3ac7d0f94ec928538a451d9e20feb7b0281deb083661f8fc6bffa7c4f1
78545b1517f099b0001f6dafe046a9d39a93d13e29db812f6fa415301bfa590d
8d90ffc18358dfb234359804da6a37bb188fa45c9e24468b0cc91f24ba6e0a1d
4ccdf00ef7948721bfe41cd61cb3eac2025e4869b226c9f22524cf2adb9ed2a0
ca09495a8b5b27435d8523aaca6f3af6795a9a61c17d758be2c1c5560e5423f1
00318c05ef530f7b2e867f4b1b9900e9535add46455f6fc39ad4777ff9c71e00
a23c05633f18b1a047102943f550c8bb5cfc62135a2d543ccc7cdef333996f5c
0883dcd7feebef2f6419ca084b9ecc0c28c5ada68eb56f6062a943d3fe4bad81
e60a6c2bac382f51147b8587119b589b134f39724fec598e28193c9b03f70fa5
""".split()}


def _jetclass():
    def archive(name, md5, folder, about):
        return Part((RemoteFile(name, _zenodo(6619768, name), ("md5", md5)),), folder, archive=True, about=about)

    parts = {f"train{i}": archive(f"JetClass_Pythia_train_100M_part{i}.tar", md5, "train_100M",
                                  f"train_100M part {i} of 10: 10M jets (~15 GB)")
             for i, md5 in enumerate(_JETCLASS_TRAIN_MD5)}
    parts["val"] = archive("JetClass_Pythia_val_5M.tar", _JETCLASS_VAL_MD5, "val_5M", "5M jets (~7.6 GB)")
    parts["test"] = archive("JetClass_Pythia_test_20M.tar", _JETCLASS_TEST_MD5, "test_20M", "20M jets (~30 GB)")
    return Dataset("JetClass", parts, ("all",), {"train": tuple(p for p in parts if p.startswith("train"))},
                   "Zenodo 6619768; md5 from jet-universe/particle_transformer get_datasets.py",
                   "--config.data.root={root} --config.data.scheme=jetclass_10")


def _jetclass2():
    parts = {}
    for group, splits in JETCLASS2_SPLIT_RANGES.items():
        for split, (first, last) in splits.items():
            names = [f"{group}_{index:04d}.parquet" for index in range(first, last + 1)]
            files = tuple(RemoteFile(n, _HF_JETCLASS2.format(kind="resolve", name=n),
                                     pointer_url=_HF_JETCLASS2.format(kind="raw", name=n)) for n in names)
            parts[f"{group}-{split}"] = Part(files, about=f"{len(files)} files of 100k jets, {names[0]}..{names[-1]}")
    splits = ("train", "val", "test")
    aliases = {split: tuple(f"{g}-{split}" for g in JETCLASS2_SPLIT_RANGES) for split in splits}
    aliases.update({g: tuple(f"{g}-{split}" for split in splits) for g in JETCLASS2_SPLIT_RANGES})
    aliases["study"] = tuple(f"{g}-{split}" for g in JETCLASS2_7.file_groups for split in splits)
    return Dataset("JetClass-II", parts, ("all",), aliases,
                   "Hugging Face jet-universe/jetclass2; sha256 from each file's Git LFS pointer",
                   "--config.data.root={root}")


def _top_landscape():
    parts = {split: Part((RemoteFile(f"{split}.h5", _zenodo(2603256, f"{split}.h5"), ("md5", md5), size),),
                         about=f"{split}.h5 (pandas HDF5 table, 200 constituents per jet)")
             for split, (md5, size) in _TOP_LANDSCAPE.items()}
    return Dataset("TopLandscape", parts, ("all",), {}, "Zenodo 2603256; md5 as listed on the record",
                   "not read by jetjax yet: the files are in {root}")


def _quark_gluon():
    about = {"nobc": "Pythia 8.226, quarks uds (the standard sample), 20 x 100k jets (~2.1 GB)",
             "withbc": "Pythia 8.235, quarks udscb, 20 x 100k jets (do not mix with nobc)"}
    parts = {kind: Part(tuple(RemoteFile(n, _zenodo(3164691, n), ("sha256", h))
                              for n, h in zip(_QG_FILES[kind], _QG_SHA256[kind])), about=about[kind])
             for kind in _QG_FILES}
    return Dataset("QuarkGluon", parts, ("nobc",), {}, "Zenodo 3164691; sha256 from thaler-lab/EnergyFlow",
                   "not read by jetjax yet: the files are in {root}")


DATASETS = {d.name: d for d in (_jetclass(), _jetclass2(), _top_landscape(), _quark_gluon())}


def get_dataset(name):
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)} (see --list)")
    return DATASETS[name]


def select_parts(dataset, names=None):
    """Part names for the requested part names or aliases (default: the dataset's default), in order, once each."""
    aliases = {"all": tuple(dataset.parts), **dataset.aliases}
    chosen = []
    for name in names or dataset.default:
        if name not in aliases and name not in dataset.parts:
            raise ValueError(f"{dataset.name} has no part {name!r}; parts: {', '.join(dataset.parts)}; "
                             f"aliases: {', '.join(aliases)}")
        chosen += [p for p in aliases.get(name, (name,)) if p not in chosen]
    return chosen


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

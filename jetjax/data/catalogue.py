"""The catalogue of public jet datasets: their parts, files, URLs, published checksums and where each comes from,
and the folder layout a fetch gives them (see jetjax.data.fetch)."""
from dataclasses import dataclass

from jetjax.data.classes import JETCLASS2_7
from jetjax.data.readers import JETCLASS2_SPLIT_RANGES


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
                   "--config.data.root={root} --config.data.scheme=top_landscape --config.data.feature_set=kin")


_QG_SPLITS = {"train": range(0, 16), "val": range(16, 18), "test": range(18, 20)}
"""energyflow's recommended 1.6M / 200k / 200k split of the 20 files of 100k jets (the files come unsplit)."""


def _quark_gluon():
    about = {"nobc": "Pythia 8.226, quarks uds (the standard sample)",
             "withbc": "Pythia 8.235, quarks udscb (do not mix with nobc)"}
    parts, aliases = {}, {}
    for kind, names in _QG_FILES.items():
        for split, indices in _QG_SPLITS.items():
            files = tuple(RemoteFile(names[i], _zenodo(3164691, names[i]), ("sha256", _QG_SHA256[kind][i]))
                          for i in indices)
            folder = split if kind == "nobc" else f"withbc/{split}"
            parts[f"{kind}-{split}"] = Part(files, folder, about=f"{about[kind]}, {len(files)} x 100k jets")
        aliases[kind] = tuple(f"{kind}-{split}" for split in _QG_SPLITS)
    return Dataset("QuarkGluon", parts, ("nobc",), aliases, "Zenodo 3164691; sha256 from thaler-lab/EnergyFlow",
                   "--config.data.root={root} --config.data.scheme=quark_gluon (withbc: {root}/withbc)")


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

"""Labelled subsets (data.label_budget): the class order against a seat-by-seat Webster allocation, the hash
against a pure-Python splitmix64, the selection against a brute-force sort of every jet of the split, nested and
deterministic subsets, and epochs that draw from the subset only."""
import zlib

import numpy as np
import pytest

from jetjax.data import labelled, pipeline, synthetic
from jetjax.data.classes import JETCLASS2_7
from jetjax.data.features import required_particle_columns, to_batch
from jetjax.data.chunks import DataError, DataReport
from jetjax.data.readers import discover_files, file_group, read_chunks
from jetjax.data.sampler import task_jets

MASK = 2 ** 64 - 1


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    synthetic.write_dataset(root, jets_per_group=1000, seed=5, jets_per_file=200)
    return root


def webster_by_seats(num_jets, fractions):
    """Each seat in turn to the class of largest fraction / (seats + 1/2), ties to the lower index."""
    seats, order = [0] * len(fractions), []
    for _ in range(num_jets):
        k = max(range(len(fractions)), key=lambda i: (fractions[i] / (seats[i] + 0.5), -i))
        seats[k] += 1
        order.append(k)
    return order


def test_class_order_is_websters_seat_order_and_near_the_quota():
    fractions = list(JETCLASS2_7.target_fractions)
    order = labelled.class_order(400, fractions)
    assert order.tolist() == webster_by_seats(400, fractions)
    for n in (1, 7, 27, 100, 400):
        counts = np.bincount(order[:n], minlength=7)
        assert np.all(np.abs(counts - n * np.array(fractions)) < 1.0 + 1e-9), (n, counts)


def splitmix64(x):
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def python_row_key(seed, name, row):
    file_key = splitmix64(seed ^ splitmix64(zlib.crc32(name.encode())))
    return splitmix64((row + file_key * 0x9E3779B97F4A7C15) & MASK)


def test_row_keys_match_a_pure_python_splitmix64():
    seed, name = 12345, "Res2P_0007.parquet"
    expected = [python_row_key(seed, name, row) for row in range(50)]
    assert labelled.row_keys(seed, name, np.arange(50)).tolist() == expected


def brute_force_selection(root, num_jets, seed):
    """(source file, order key) of the selected jets: every usable jet of the split read whole, those of a
    class in the files of its group sorted by (rank of the file in the seeded order, key), the first n_k of
    class k, placed at the class order."""
    files = sorted((f for fs in discover_files(root, "train").values() for f in fs), key=str)
    rank = {files[i]: r for r, i in enumerate(np.random.default_rng(seed).permutation(len(files)))}
    jets = {k: [] for k in range(7)}
    for path in files:
        for raw in read_chunks(path, required_particle_columns("kin"), chunk_size=10 ** 6):
            raw.jets[labelled.ORDER_KEY] = np.array([python_row_key(seed, path.name, r) for r in range(len(raw))],
                                                    np.uint64)
            chunk, labels = task_jets(raw, JETCLASS2_7, DataReport())
            for key, label in zip(chunk.jets[labelled.ORDER_KEY], labels):
                if JETCLASS2_7.classes[label].file_group == file_group(path):
                    jets[int(label)].append((rank[path], int(key), path.name))
    classes = labelled.class_order(num_jets, JETCLASS2_7.target_fractions)
    sorted_jets = {k: sorted(v) for k, v in jets.items()}
    taken = {k: 0 for k in range(7)}
    result = []
    for k in classes:
        _, key, name = sorted_jets[int(k)][taken[int(k)]]
        taken[int(k)] += 1
        result.append((name, key))
    return result


def selection(root, num_jets, seed, chunk_size=4096):
    groups = discover_files(root, "train")
    chunk, labels = labelled.select_labelled(groups, JETCLASS2_7, num_jets, seed, "kin", chunk_size=chunk_size)
    return chunk, labels


def test_selection_is_the_brute_force_order_nested_and_deterministic(dataset):
    big, big_labels = selection(dataset, 300, seed=7)
    keys = big.jets[labelled.ORDER_KEY]
    reference = brute_force_selection(dataset, 300, seed=7)
    assert [int(k) for k in keys] == [key for _, key in reference]
    assert np.array_equal(big_labels, labelled.class_order(300, JETCLASS2_7.target_fractions))
    assert np.array_equal(JETCLASS2_7.class_index(big.raw_label), big_labels)

    small, small_labels = selection(dataset, 120, seed=7, chunk_size=64)  # another chunking, same order
    assert np.array_equal(small.jets[labelled.ORDER_KEY], keys[:120])
    assert np.array_equal(small_labels, big_labels[:120])
    assert np.array_equal(small.counts, big.counts[:120])
    assert np.array_equal(small.particles["part_px"], big.particles["part_px"][:small.counts.sum()])

    other, _ = selection(dataset, 120, seed=8)
    assert len(set(other.jets[labelled.ORDER_KEY]) & set(keys[:120])) < 12  # another seed, other jets


def test_a_budget_beyond_the_split_names_the_class_the_folder_and_the_keys(dataset):
    with pytest.raises(DataError, match=r"label_budget=3000 .*qqb_bcs needs 1000") as error:
        selection(dataset, 3000, seed=0)
    message = str(error.value)
    assert f"under {dataset / 'train'}" in message and "config.data.root" in message
    assert "config.data.synthetic_jets_per_group" in message
    with pytest.raises(ValueError, match="label_budget=12.5"):
        selection(dataset, 12.5, seed=0)


def test_epochs_draw_from_the_subset_only_and_resume(dataset):
    args = dict(feature_set="kin", num_particles=32, batch_size=50, epoch_size=500, seed=3, label_budget=200,
                label_seed=7)
    sampler = pipeline.training_sampler(dataset, **args)
    subset, _ = selection(dataset, 200, seed=7)
    subset_jets = {tuple(j) for j in to_batch(subset, np.zeros(200), "kin", 32, DataReport())["jet"]}
    epoch = list(sampler.batches(epoch=1))
    drawn = np.concatenate([b["jet"] for b in epoch])
    assert len(drawn) == 500 and {tuple(j) for j in drawn} <= subset_jets
    first_pass = {tuple(j) for j in drawn[:200]}
    assert len(first_pass) == 200  # a pass draws every labelled jet once
    resumed = list(pipeline.training_sampler(dataset, **args).batches(epoch=1, start_batch=4))
    assert all(np.array_equal(a["features"], b["features"]) for a, b in zip(epoch[4:], resumed))
    assert len(resumed) == len(epoch) - 4
    again = list(pipeline.training_sampler(dataset, **args).batches(epoch=2))
    assert not np.array_equal(again[0]["jet"], epoch[0]["jet"])


def test_jets_of_a_class_come_from_its_file_group_only(dataset, tmp_path):
    import shutil

    shutil.copytree(dataset / "train", tmp_path / "train")
    shutil.copy(dataset / "train" / "Res2P_0000.parquet", tmp_path / "train" / "QCD_0999.parquet")  # bb in QCD
    files = sorted((tmp_path / "train").iterdir(), key=str)

    def visits_the_copy_first(seed):
        order = [files[i].name for i in np.random.default_rng(seed).permutation(len(files))]
        return order.index("QCD_0999.parquet") < min(order.index(f.name) for f in files if f.name.startswith("Res2P"))

    seed = next(s for s in range(100) if visits_the_copy_first(s))  # bb jets would be taken from it first
    chunk, labels = selection(tmp_path, 300, seed=seed)
    assert [int(k) for k in chunk.jets[labelled.ORDER_KEY]] == [k for _, k in brute_force_selection(tmp_path, 300,
                                                                                                    seed)]
    foreign = set(labelled.row_keys(seed, "QCD_0999.parquet", np.arange(200)).tolist())
    assert not foreign & set(chunk.jets[labelled.ORDER_KEY].tolist())

"""Training batches built in worker processes (data.workers): the same stream as in one thread, bit for bit,
also when resumed; worker errors raised here naming the file; no worker left behind."""
import gc
import multiprocessing
import os
import signal

import numpy as np
import pytest

from jetjax.data import pipeline, synthetic
from jetjax.data.chunks import DataError

ARGS = dict(feature_set="kinpid", num_particles=32, batch_size=250, epoch_size=2500, seed=0, buffer_size=400,
            pool_size=3, chunk_size=200)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.write_dataset(root, jets_per_group=2000, seed=5, jets_per_file=400)
    return root


def sampler(root, **kw):
    return pipeline.training_sampler(root, **{**ARGS, **kw})


def workers_alive():
    return [p for p in multiprocessing.active_children() if p.name.startswith("jetjax-data-worker")]


def assert_same_batches(expected, got):
    assert len(got) == len(expected)
    for a, b in zip(expected, got):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_two_workers_give_the_in_thread_stream_bit_for_bit_also_resumed(dataset):
    in_thread, in_workers = sampler(dataset), sampler(dataset, workers=2)
    expected = list(in_thread.batches(epoch=3))
    assert_same_batches(expected, list(in_workers.batches(epoch=3)))
    assert in_workers.report.counts["particles_truncated"] > 0  # counted in the workers, summed here
    assert in_workers.report.as_dict() == in_thread.report.as_dict()
    assert_same_batches(expected[7:], list(sampler(dataset, workers=2).batches(epoch=3, start_batch=7)))
    grouped = sampler(dataset, workers=1, length_window=4)  # the length-grouped sampler on top of workers
    assert_same_batches(list(sampler(dataset, length_window=4).batches(epoch=3, start_batch=5)),
                        list(grouped.batches(epoch=3, start_batch=5)))
    assert not workers_alive()


def test_a_read_error_in_a_worker_is_raised_here_naming_the_file(dataset, tmp_path):
    bad = tmp_path / "QCD_0099.parquet"
    bad.write_bytes(b"not a parquet file")
    files = [str(p) for p in sorted((dataset / "train").iterdir()) if not p.name.startswith("QCD_")]
    files += [str(dataset / "train" / "QCD_0000.parquet")]  # with the bad one, both in the QCD stream's pool
    with pytest.raises(DataError, match="QCD_0099.parquet") as raised:
        list(sampler(None, files=files + [str(bad)], workers=2).batches())
    assert any("raised in data worker" in note for note in raised.value.__notes__)
    assert not workers_alive()
    skipping, in_thread = (sampler(None, files=files + [str(bad)], skip_bad_files=True, workers=w) for w in (2, 0))
    assert_same_batches(list(in_thread.batches()), list(skipping.batches()))
    assert skipping.report.skipped_files == in_thread.report.skipped_files
    assert skipping.report.skipped_files[0][0] == str(bad)


def test_workers_stop_when_the_iterator_is_closed_or_collected(dataset):
    stream = sampler(dataset, workers=2).batches()
    next(stream)
    assert len(workers_alive()) == 2
    stream.close()
    assert not workers_alive()
    stream = sampler(dataset, workers=2).batches()
    next(stream)
    del stream
    gc.collect()
    assert not workers_alive()


def test_a_worker_that_dies_raises_instead_of_hanging(dataset):
    stream = sampler(dataset, workers=2).batches()
    next(stream)
    os.kill(workers_alive()[0].pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match=r"data worker \d \(pid \d+\) exited with code -9"):
        list(stream)
    assert not workers_alive()

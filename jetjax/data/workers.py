"""Training batches built in worker processes (config `data.workers`), the same stream as in one thread.

The in-thread sampler spends its time in three stages (experiments/bench_data.py, one core, B = 512,
P = 128): decoding the files' chunks (about a third), cleaning, selecting and drawing jets (about 40%),
and building the padded features of each batch (about a quarter). Decoding and features are pure
functions of their inputs; the sampler's choices (which file, which chunk, which jets) depend on what it
read so far and are cheap. So the sampler keeps running in the calling process, exactly as in one
thread (`StratifiedSampler.batch_jets`), and hands the two pure stages to `workers` processes:

- when the sampler opens a file, a worker (in turn) starts decoding it, `read_ahead` chunks ahead of the
  sampler, which takes them in file order (`readers.read_chunks` runs in the worker);
- the jets the sampler drew for batch i go to worker i mod N for `sampler.build_batch`; up to
  `2 N` batches are in flight and they come back in order.

Hence the stream equals the in-thread one bit for bit, whatever N, and resumes at any batch in the same
way (the batches before `start_batch` are replayed: decoded and drawn, never featurised); the data
report is the same too (workers return their counts). An error raised in a worker is raised here with
its message (read errors name the file) and a note naming the worker, the file or batch and its
traceback; a worker that dies raises a RuntimeError. Workers are forked from multiprocessing's fork server
(a fresh process that imported only the readers, pyarrow and pandas; the parent itself is never forked, as it has
usually imported jax) for each epoch's iterator and stopped when it ends, is closed or is garbage-collected.
"""
import fcntl
import itertools
import multiprocessing
import os
import pickle
import queue
import threading
import traceback
from collections import deque

import numpy as np

from jetjax.data.chunks import DataReport

from jetjax.data.readers import read_chunks
from jetjax.data.sampler import build_batch

FORK_SERVER_PRELOAD = ["jetjax.data.workers", "jetjax.data.benchmarks", "pyarrow.parquet", "pandas"]
"""Imported once by the fork server, not by every worker: the modules a first read imports (pyarrow
imports pandas, where installed, on its first read: about a second)."""


class WorkerSampler:
    """`sampler` (a StratifiedSampler) with its reading and batch building in `workers` processes."""

    def __init__(self, sampler, workers, read_ahead=2):
        if workers < 1:
            raise ValueError(f"config.data.workers={workers}: WorkerSampler needs at least one worker process")
        self.sampler, self.workers, self.read_ahead = sampler, workers, read_ahead
        self.batches_per_epoch, self.report, self.seed = sampler.batches_per_epoch, sampler.report, sampler.seed

    def batches(self, epoch=0, start_batch=0):
        """The batches of `epoch` from `start_batch` on, equal to `sampler.batches(epoch, start_batch)`."""
        s = self.sampler
        pool = WorkerPool(self.workers, self.read_ahead)
        try:
            pending = deque()
            for index, jets in enumerate(s.batch_jets(epoch, start_batch, pool.read), start=start_batch):
                pending.append(pool.submit_batch(index, *jets, s.feature_set, s.num_particles))
                if len(pending) > 2 * self.workers:
                    yield pool.batch(*pending.popleft(), s.report)
            while pending:
                yield pool.batch(*pending.popleft(), s.report)
        finally:
            pool.close()


class WorkerPool:
    """`count` worker processes serving file reads and batch building, each over a request pipe and a
    reply pipe (two, so that neither side's send of a large message waits on the other's); replies to
    several requests share a pipe and are sorted by key on arrival."""

    def __init__(self, count, read_ahead):
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(FORK_SERVER_PRELOAD)
        self.read_ahead, self.requests, self.replies, self.processes = read_ahead, [], [], []
        self.inbox, self.keys, self.turn = {}, itertools.count(), itertools.count()
        for i in range(count):
            (request_out, request_in), (reply_out, reply_in) = context.Pipe(False), context.Pipe(False)
            for connection in (request_in, reply_in):
                _widen(connection)
            process = context.Process(target=serve, args=(request_out, reply_in), name=f"jetjax-data-worker-{i}",
                                      daemon=True)
            process.start()
            request_out.close()
            reply_in.close()
            self.requests.append(request_in)
            self.replies.append(reply_out)
            self.processes.append(process)

    def read(self, path, columns, label_branches, chunk_size, column_map):
        """Like readers.read_chunks: an iterator of the file's chunks, decoded by the next worker in turn,
        which starts at once."""
        worker, key = next(self.turn) % len(self.processes), ("file", next(self.keys))
        self._send(worker, ("open", key, path, columns, label_branches, chunk_size, column_map))
        for _ in range(self.read_ahead):
            self._send(worker, ("next", key))
        return self._chunks(worker, key, path)

    def _chunks(self, worker, key, path):
        while True:
            kind, value = self._receive(worker, key, f"reading {path}")
            if kind == "end":
                return
            self._send(worker, ("next", key))
            yield value

    def submit_batch(self, index, *jets_and_settings):
        """Send batch `index`'s jets (the arguments of sampler.build_batch but the report) to worker
        index mod N; returns the arguments of `batch`."""
        worker = index % len(self.processes)
        self._send(worker, ("batch", ("batch", index), *jets_and_settings))
        return worker, ("batch", index)

    def batch(self, worker, key, report):
        """The padded batch of request `key`; its data-report counts are added to `report`."""
        _, (batch, counts) = self._receive(worker, key, f"building the features of batch {key[1]}")
        for what, n in counts.items():
            report.count(what, n)
        return batch

    def _send(self, worker, message):
        try:
            send(self.requests[worker], message)
        except (BrokenPipeError, ConnectionResetError):
            raise self._died(worker, "taking a request") from None

    def _receive(self, worker, key, doing):
        """The next reply to `key` from `worker`; a reply of kind 'error' is raised with notes."""
        while not self.inbox.get(key):
            try:
                kind, reply_key, value = receive(self.replies[worker])
            except (EOFError, ConnectionResetError):
                raise self._died(worker, doing) from None
            self.inbox.setdefault(reply_key, deque()).append((kind, value))
        kind, value = self.inbox[key].popleft()
        if not self.inbox[key]:
            del self.inbox[key]
        if kind == "error":
            error, remote_traceback = value
            error.add_note(f"raised in data worker {worker} (pid {self.processes[worker].pid}) {doing}; "
                           f"its traceback:\n{remote_traceback}")
            raise error
        return kind, value

    def _died(self, worker, doing):
        process = self.processes[worker]
        process.join(timeout=1)
        return RuntimeError(f"data worker {worker} (pid {process.pid}) exited with code {process.exitcode} while "
                            f"{doing}; set config.data.workers=0 to read in this process and see the error")

    def close(self):
        """Stop the workers: their pipes are closed (they exit at the next message they cannot send or
        receive), then they are joined, terminated if they do not exit within a second."""
        for connection in self.requests + self.replies:
            connection.close()
        for process in self.processes:
            process.join(timeout=1)
            if process.is_alive():
                process.terminate()
                process.join()
        self.requests, self.replies, self.inbox = [], [], {}


def _widen(connection, size=1 << 20):
    """Raise a pipe's buffer to `size` bytes where Linux allows (fewer, larger reads of a batch); elsewhere it stays."""
    try:
        fcntl.fcntl(connection.fileno(), fcntl.F_SETPIPE_SZ, size)
    except (AttributeError, OSError):
        pass


def serve(requests, replies):
    """A worker's loop: requests ('open', key, path, columns, label_branches, chunk_size, column_map),
    ('next', key) and ('batch', key, parts, positions, labels, feature_set, num_particles), answered in order
    with (kind, key, value); an error is answered as ('error', key, (exception, traceback text)) and ends that
    file. A thread takes
    the requests off their pipe as they come, so that the parent never waits to send one."""
    waiting = queue.SimpleQueue()
    threading.Thread(target=_receive_all, args=(requests, waiting), daemon=True).start()
    files = {}
    try:
        while (message := waiting.get()) is not None:
            request, key, *args = message
            try:
                if request == "open":
                    files[key] = read_chunks(*args)
                elif request == "next" and key in files:
                    chunk = next(files[key], None)
                    if chunk is None:
                        del files[key]
                    send(replies, ("chunk", key, chunk) if chunk is not None else ("end", key, None))
                elif request == "batch":
                    report = DataReport()
                    send(replies, ("batch", key, (build_batch(*args, report), dict(report.counts))))
            except (BrokenPipeError, ConnectionResetError):
                raise
            except Exception as error:  # handed to the parent, raised there
                files.pop(key, None)
                send(replies, ("error", key, (_picklable(error), traceback.format_exc())))
    except (BrokenPipeError, ConnectionResetError):
        return  # the parent closed the pipe


def _receive_all(requests, waiting):
    """Move requests from their pipe to `waiting` until the parent closes it (then None)."""
    try:
        while True:
            waiting.put(receive(requests))
    except (EOFError, OSError):
        waiting.put(None)


def send(connection, message):
    """Send `message` through a multiprocessing Connection with the data of its numpy arrays written to
    the pipe straight from their memory (pickle protocol 5 out-of-band buffers)."""
    buffers = []
    header = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    views = [buffer.raw() for buffer in buffers]
    connection.send((header, [view.nbytes for view in views]))
    for view in views:
        while len(view):
            view = view[os.write(connection.fileno(), view):]


def receive(connection):
    """A message of `send`, its arrays read from the pipe into their own fresh memory."""
    header, sizes = connection.recv()
    buffers = [np.empty(size, np.uint8) for size in sizes]
    for buffer in buffers:
        view = memoryview(buffer)
        while len(view):
            n = os.readv(connection.fileno(), [view])
            if n == 0:
                raise EOFError("the other end of the pipe closed during a message")
            view = view[n:]
    return pickle.loads(header, buffers=buffers)


def _picklable(error):
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # an exception type that cannot cross processes: its type and message do
        return RuntimeError(f"{type(error).__name__}: {error}")

"""How batches reach the compiled steps and results come back: every batch laid out by one of a small,
fixed set of programs (slot counts and packed layout plans, models/layout.py) that a run settles before its
first step, placed on the devices ahead of the step; evaluation streams regrouped by multiplicity, results
fetched once per window and returned in the stream's order."""
import itertools

import jax
import numpy as np

from configs import defaults
from jetjax import parallel
from jetjax.data import pipeline
from jetjax.models.layout import bounded_plans, bounded_slots, fits, plan_slots

LAYOUT_MODES = ("auto", "packed", "dense")
"""config.layout (defaults: configs/defaults.py): how batches are computed (never what). `mode`: 'packed' (per-
particle layers and the pair MLP on real particles and pairs only, attention on `groups` groups of jets sorted
by multiplicity), 'dense' (every slot of the batch's slot bucket: large static shapes for GPUs and TPUs), 'auto'
(packed on the CPU, dense elsewhere). `buckets`: the programs per step function, fixed from the multiplicities
of the first `sample_batches` batches (the last one holds any batch); slot counts are multiples of
`slot_multiple`; validation and test jets are grouped by multiplicity within windows of `eval_window` batches."""


def layout_settings(config):
    """config.layout with the defaults filled in, checked."""
    layout = defaults.section(config, "layout")
    if layout.mode not in LAYOUT_MODES:
        raise ValueError(f"config.layout.mode={layout.mode!r} is not one of {LAYOUT_MODES}")
    if layout.buckets < 1 or layout.sample_batches < 1:
        raise ValueError(f"config.layout.buckets={layout.buckets} and config.layout.sample_batches="
                         f"{layout.sample_batches} must be positive")
    return layout


def resolved_mode(mode, platform):
    """The layout mode on `platform` (jax's default_backend()): 'auto' is packed on the CPU, dense elsewhere."""
    return ("packed" if platform == "cpu" else "dense") if mode == "auto" else mode


class Feeder:
    """How host batches reach the compiled steps. Before its first batch the feeder settles its programs (at
    most `layout.buckets` (slot count, plan) pairs, models/layout.py) from the encoder lengths of a sample of
    batches (`settle`; else the first `layout.sample_batches` batches it is given); each batch then runs on
    the first program it fits, cut to that program's slots, and is placed on the devices in a background
    thread while the current step runs. Batches are global: with several processes, each process holds the
    same batch, settles the same programs and picks the same one, and places its own rows
    (`parallel.host_share`), so the thread never waits on the other processes. Results never depend on any
    of this (padding invariance); only the speed does."""

    def __init__(self, model, mesh, num_particles, layout):
        self.model, self.mesh, self.num_particles, self.layout = model, mesh, num_particles, layout
        self.mode = resolved_mode(layout.mode, jax.default_backend())
        self.sync_each_step = parallel.needs_step_sync(mesh)
        self.programs = None
        self.used = set()

    def settle(self, batches):
        """Fixes the programs from the encoder lengths of `batches` (global batches of the run's batch size)
        and returns them: [(slots, plan or None)], the last holding any batch."""
        sample = [self.model.encoder_lengths(b["mask"].sum(axis=1)) for b in batches]
        layout, slots = self.layout, self.num_particles
        if self.mode == "packed":
            plans = bounded_plans(sample, slots, self.mesh.size, layout.groups, layout.slot_multiple, layout.buckets)
            self.programs = [(plan_slots(plan), plan) for plan in plans]
        else:
            self.programs = [(s, None) for s in bounded_slots(sample, slots, layout.slot_multiple, layout.buckets)]
        return self.programs

    def prepare(self, batch):
        """(the batch cut to its program's slot count, the program's plan or None)."""
        lengths = self.model.encoder_lengths(batch["mask"].sum(axis=1))
        slots, plan = next((s, p) for s, p in self.programs
                           if (lengths.max() <= s if p is None else fits(p, lengths)))
        self.used.add((slots, plan))
        return cut_to_slots(batch, slots), plan

    def device_batch(self, batch):
        """The model inputs of a prepared (global) batch, this process's share placed on the devices."""
        return parallel.shard_batch(parallel.host_share({k: batch[k] for k in pipeline.MODEL_INPUTS if k in batch}),
                                    self.mesh)

    def __call__(self, batches, size=2):
        """(device batch, plan, global batch) for each global batch, prepared `size` ahead in a thread."""
        batches = iter(batches)
        if self.programs is None:
            sample = list(itertools.islice(batches, self.layout.sample_batches))
            self.settle(sample)
            batches = itertools.chain(sample, batches)

        def placed():
            for batch in batches:
                cut, plan = self.prepare(batch)
                yield self.device_batch(cut), plan, batch
        return pipeline.prefetch(placed(), size)


def cut_to_slots(batch, slots):
    """The batch's per-particle arrays cut to their first `slots` slots."""
    return {k: v[:, :slots] if v.ndim > 1 and k != "jet" else v for k, v in batch.items()}


def compile_ahead(state, steps, feeder, sample):
    """Settles `feeder` on the global batches `sample` and lowers and compiles each of `steps` (jitted
    state, batch, plan -> ... functions) for every one of its programs, before the first step: a run knows
    and builds all its programs at start-up (jit reuses them when the steps are called)."""
    for slots, plan in feeder.settle(sample):
        batch = feeder.device_batch(cut_to_slots(sample[0], slots))
        for step in steps:
            step.lower(state, batch, plan).compile()


def pad_batch(batch, size):
    """A batch of exactly `size` jets (the natural stream's last batch is shorter): extra jets have no
    particles, position -1, and are dropped from every result."""
    n = len(batch["label"])
    if n == size:
        return batch
    pad = {k: np.zeros((size - n,) + v.shape[1:], v.dtype) for k, v in batch.items()}
    pad["position"] = np.full(size - n, -1, np.int64)
    return {k: np.concatenate([v, pad[k]]) for k, v in batch.items()}


def softmax(logits):
    """Softmax over the last axis in float64, on the host (a jax call would compile for every batch length)."""
    shifted = np.asarray(logits, np.float64)
    shifted = np.exp(shifted - shifted.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def eval_stream(batches, batch_size, window):
    """What evaluation computes: `batches` regrouped by multiplicity within windows of `window` batches
    (pipeline.grouped_by_length), each padded to `batch_size` jets."""
    return (pad_batch(batch, batch_size) for batch in pipeline.grouped_by_length(batches, window))


def run_eval(state, eval_step, feeder, batches, batch_size, window, keep_embeddings=0):
    """Mean metrics over `batches` (global batches of at most `batch_size` jets) and, for classifiers, the
    softmax scores and labels of every jet (regression heads: `predictions` and `targets`) and the first
    `keep_embeddings` representations, all in the stream's order. Jets are grouped by multiplicity within
    windows of `window` batches (pipeline.grouped_by_length) so that most batches land in small slot
    buckets; results are fetched from the devices once per window. With several processes, each computes its
    share of every batch and every process returns the whole result."""
    sums, count, parts, labels, pending = {}, 0, [], [], []

    def fetch():
        nonlocal count
        results = parallel.fetch_global([result for result, *_ in pending])
        for (metrics, outputs), (_, position, label, target) in zip(results, pending):
            real = position >= 0
            labels.append(label[real])
            n = int(real.sum())
            for k, v in metrics.items():  # padded jets only exist in the last batch of the natural stream
                sums[k] = sums.get(k, 0.0) + float(v) * n
            count += n
            part = {"position": position[real]}
            if "logits" in outputs:
                part["scores"] = softmax(outputs["logits"][real])
            if "prediction" in outputs:
                part.update(predictions=outputs["prediction"][real], targets=target[real])
            kept = real & (position < keep_embeddings)
            part["embeddings"] = outputs["z"][kept]
            part["embedding_position"] = position[kept]
            parts.append(part)
        pending.clear()

    stream = eval_stream(batches, batch_size, window)
    for device_batch, plan, batch in feeder(stream):
        pending.append((eval_step(state, device_batch, plan), batch["position"], batch["label"], batch.get("target")))
        if feeder.sync_each_step:
            jax.block_until_ready(pending[-1][0])
        if len(pending) == window:
            fetch()
    fetch()
    position = np.concatenate([p["position"] for p in parts])
    order = np.argsort(position)
    result = {"metrics": {k: v / max(count, 1) for k, v in sums.items()},
              "labels": np.concatenate(labels)[order]}
    for key in ("scores", "predictions", "targets"):
        if key in parts[0]:
            result[key] = np.concatenate([p[key] for p in parts])[order]
    if keep_embeddings:
        embedding_order = np.argsort(np.concatenate([p["embedding_position"] for p in parts]))
        result["embeddings"] = np.concatenate([p["embeddings"] for p in parts])[embedding_order]
    return result

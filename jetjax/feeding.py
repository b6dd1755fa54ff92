"""How batches reach the compiled steps and results come back: every batch cut to its slot bucket and laid
out by a packed layout plan (models/layout.py), placed on the devices ahead of the step; evaluation streams
regrouped by multiplicity, results fetched once per window and returned in the stream's order."""
import jax
import numpy as np

from jetjax import parallel
from jetjax.data import pipeline
from jetjax.models.layout import plan_layout, slot_bucket

LAYOUT_DEFAULTS = dict(packed=True, groups=4, slot_multiple=16, eval_window=16)
"""config.layout: how batches are computed (never what): `packed` per-particle layers and pair MLP on real
particles and pairs only; attention on `groups` groups of jets sorted by multiplicity; slot counts rounded up
to multiples of `slot_multiple`; validation and test jets grouped by multiplicity within windows of
`eval_window` batches."""


def layout_settings(config):
    """config.layout with the defaults filled in (runs saved before the section existed have none)."""
    import ml_collections

    return ml_collections.ConfigDict({**LAYOUT_DEFAULTS, **config.get("layout", {})})


class Feeder:
    """How host batches reach the compiled steps: each batch is cut to the smallest slot bucket that holds
    what the encoder will see (`layout.slot_multiple`), given the packed layout plan of its multiplicities
    (`layout.packed`, `layout.groups`: models/layout.py), and placed on the devices in a background thread
    while the current step runs. Batches are global: with several processes, each process holds the same
    batch, derives the same slot count and plan from it and places its own rows (`parallel.host_share`), so
    the thread never waits on the other processes. Results never depend on any of this (padding
    invariance); only the speed does."""

    def __init__(self, model, mesh, num_particles, layout):
        self.model, self.mesh, self.num_particles = model, mesh, num_particles
        self.packed, self.groups, self.slot_multiple = layout.packed, layout.groups, layout.slot_multiple
        self.sync_each_step = parallel.needs_step_sync(mesh)
        self.plans = set()

    def prepare(self, batch):
        """(the batch cut to its slot bucket, its layout plan or None)."""
        lengths = batch["mask"].sum(axis=1)
        encoder_lengths = self.model.encoder_lengths(lengths)
        slots = slot_bucket(max(int(encoder_lengths.max()), 1), self.slot_multiple, self.num_particles)
        batch = {k: v[:, :slots] if v.ndim > 1 and k != "jet" else v for k, v in batch.items()}
        plan = plan_layout(encoder_lengths, slots, self.mesh.size, self.groups, self.slot_multiple) \
            if self.packed else None
        self.plans.add((slots, plan))
        return batch, plan

    def __call__(self, batches, size=2):
        """(device batch, plan, global batch) for each global batch, prepared `size` ahead in a thread."""
        def placed():
            for batch in batches:
                cut, plan = self.prepare(batch)
                inputs = parallel.host_share({k: cut[k] for k in pipeline.MODEL_INPUTS if k in cut})
                yield parallel.shard_batch(inputs, self.mesh), plan, batch
        return pipeline.prefetch(placed(), size)


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


def run_eval(state, eval_step, feeder, batches, batch_size, window, keep_embeddings=0):
    """Mean metrics over `batches` (global batches of at most `batch_size` jets) and, for classifiers, the
    softmax scores and labels of every jet and the first `keep_embeddings` representations, all in the
    stream's order. Jets are grouped by multiplicity within windows of `window` batches
    (pipeline.grouped_by_length) so that most batches land in small slot buckets; results are fetched from
    the devices once per window. With several processes, each computes its share of every batch and every
    process returns the whole result."""
    sums, count, parts, labels, pending = {}, 0, [], [], []

    def fetch():
        nonlocal count
        results = parallel.fetch_global([result for result, _, _ in pending])
        for (metrics, outputs), (_, position, label) in zip(results, pending):
            real = position >= 0
            labels.append(label[real])
            n = int(real.sum())
            for k, v in metrics.items():  # padded jets only exist in the last batch of the natural stream
                sums[k] = sums.get(k, 0.0) + float(v) * n
            count += n
            part = {"position": position[real]}
            if "logits" in outputs:
                part["scores"] = softmax(outputs["logits"][real])
            kept = real & (position < keep_embeddings)
            part["embeddings"] = outputs["z"][kept]
            part["embedding_position"] = position[kept]
            parts.append(part)
        pending.clear()

    stream = (pad_batch(batch, batch_size) for batch in pipeline.grouped_by_length(batches, window))
    for device_batch, plan, batch in feeder(stream):
        pending.append((eval_step(state, device_batch, plan), batch["position"], batch["label"]))
        if feeder.sync_each_step:
            jax.block_until_ready(pending[-1][0])
        if len(pending) == window:
            fetch()
    fetch()
    position = np.concatenate([p["position"] for p in parts])
    order = np.argsort(position)
    result = {"metrics": {k: v / max(count, 1) for k, v in sums.items()},
              "labels": np.concatenate(labels)[order]}
    if "scores" in parts[0]:
        result["scores"] = np.concatenate([p["scores"] for p in parts])[order]
    if keep_embeddings:
        embedding_order = np.argsort(np.concatenate([p["embedding_position"] for p in parts]))
        result["embeddings"] = np.concatenate([p["embeddings"] for p in parts])[embedding_order]
    return result

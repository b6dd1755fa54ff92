"""How the encoder lays out a batch of jets: every slot (`DenseLayout`), or real particles only (`PackedLayout`).

The ParT encoder is a function of each jet's set of real particles; padded slots never change a real output.
So the same result can be computed with less work, and the layout is a speed choice, never a modelling one:

- `DenseLayout(mask)`: what the inputs look like, (B, S) slots per jet. Per-particle layers run on every slot,
  the pair MLP on the S(S+1)/2 slot pairs i >= j of every jet, attention on (B, H, S, S). The layout of the
  reference implementation, used when no plan is given (initialisation, export, the fidelity test).
- `PackedLayout(mask, plan)`: the real particles of each jet packed into rows (no padding), the real pairs
  i >= j of each jet packed likewise; per-particle layers (embedding, q/k/v/output projections, FFN, norms)
  and the pair MLP run on the packed rows only. Attention alone needs per-jet slots: the jets, sorted by
  multiplicity, are cut into groups of a fixed number of jets, and each group is gathered onto its own slot
  count (its longest jet rounded up to a bucket), so short jets do not pay for the batch's longest one.
  Capacities and slot counts are static (`LayoutPlan`, planned on the host from the multiplicities by
  `plan_layout`): one compiled program per plan. A run compiles a few nested plans fixed before its first
  step (`bounded_plans`, the last holding any batch) and runs each batch on the first one it `fits`.

Both offer the same operations (rows, row masks, pair rows, the attention bias per group, self- and class
attention per group, back to dense slots), so one encoder code path serves both.

Several devices: the packed rows carry a leading shard axis, one shard per device of the data mesh, and
every index stays inside its shard: XLA keeps the gathers local and reduces the BatchNorm sums over shards.
Within a jet, particles keep their slot order; the encoder never sees slot positions, so packing is exact.
"""
import dataclasses
import functools
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

NEG_INF = -1e9
"""Additive attention logit of a masked key: its softmax weight underflows to exactly 0 in float32."""


@dataclasses.dataclass(frozen=True)
class LayoutPlan:
    """Static shape of a packed batch (hashable: a `jax.jit` static argument).

    shards: leading axis of the packed rows (devices of the data mesh); each shard packs B / shards jets.
    groups: ((jets, slots), ...) per shard, in increasing multiplicity; the jets add up to B / shards.
    particles, pairs: packed rows per shard for real particles and real pairs i >= j.
    """
    shards: int
    groups: Tuple[Tuple[int, int], ...]
    particles: int
    pairs: int

    @property
    def jets_per_shard(self):
        return sum(jets for jets, _ in self.groups)


def _round_up(x, multiple):
    return int(-(-int(x) // multiple) * multiple)


def slot_bucket(length, multiple, limit):
    """The smallest multiple of `multiple` that holds `length` particles (at least one bucket), capped at
    `limit` (the batch's slot count P)."""
    return min(max(_round_up(length, multiple), multiple), limit)


def plan_layout(lengths, slots, shards=1, groups=4, slot_multiple=16):
    """The `LayoutPlan` of a batch whose jets have `lengths` real particles (numpy (B,), an upper bound of
    what the encoder will see), padded to `slots` slots, split into `shards` equal shards.

    Jets are sorted by length within each shard and cut into `groups` groups of equal size; a group's slot
    count is the bucket (`slot_bucket`) of its longest jet over all shards. The particle and pair capacities
    are the largest shard's counts (`bounded_plans` widens plans to hold other batches)."""
    lengths = np.asarray(lengths, np.int64)
    if len(lengths) % shards:
        raise ValueError(f"{len(lengths)} jets do not split into {shards} equal shards")
    per_shard = np.sort(lengths.reshape(shards, -1), axis=1)
    jets = per_shard.shape[1]
    groups = max(1, min(groups, jets))
    bounds = np.linspace(0, jets, groups + 1).round().astype(int)
    plan = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if stop > start:
            plan.append((int(stop - start), slot_bucket(per_shard[:, stop - 1].max(), slot_multiple, slots)))
    particles = max(1, int(per_shard.sum(axis=1).max()))
    pairs = max(1, int((per_shard * (per_shard + 1) // 2).sum(axis=1).max()))
    return LayoutPlan(shards, tuple(plan), particles, pairs)


def plan_slots(plan):
    """The slot count a batch is cut to for `plan`: its largest group's."""
    return max(slots for _, slots in plan.groups)


def fits(plan, lengths):
    """Whether a batch whose jets have `lengths` real particles (numpy (B,)) fits `plan`: per shard, sorted by
    length, each group's longest jet within the group's slots, and the particles and pairs within the
    capacities (host side; the engine only ever runs a batch on a plan it fits)."""
    per_shard = np.sort(np.asarray(lengths, np.int64).reshape(plan.shards, -1), axis=1)
    last = np.cumsum([jets for jets, _ in plan.groups]) - 1
    return bool(np.all(per_shard[:, last].max(axis=0) <= [slots for _, slots in plan.groups])
                and per_shard.sum(axis=1).max() <= plan.particles
                and (per_shard * (per_shard + 1) // 2).sum(axis=1).max() <= plan.pairs)


def envelope(plans):
    """The smallest plan that holds every batch that one of `plans` holds (plans of one batch size, shard and
    group count: their groups have the same jets)."""
    groups = tuple((jets, max(plan.groups[g][1] for plan in plans)) for g, (jets, _) in enumerate(plans[0].groups))
    return LayoutPlan(plans[0].shards, groups, max(p.particles for p in plans), max(p.pairs for p in plans))


def plan_work(plan):
    """A measure of a plan's cost: its pair rows plus its attention entries."""
    return plan.pairs + sum(jets * slots * slots for jets, slots in plan.groups)


def coverage_fractions(count):
    """The fractions of a sample that the first `count` - 1 of `count` nested programs hold: 1/2, 3/4, 7/8, ..."""
    return [1 - 0.5 ** k for k in range(1, count)]


RESAMPLED_BATCHES = 256
"""Batches drawn from a sample's jets to size the plan that holds nearly every batch like the sample."""


def bounded_plans(sample, slots, shards, groups, slot_multiple, count):
    """`count` nested plans (at most) for batches like `sample` (encoder lengths of a few batches, numpy (B,)
    each): the first `count` - 2 hold the lightest `coverage_fractions(count - 1)` of the sample's batches (the
    envelope of their own plans); the next holds every batch of the sample and `RESAMPLED_BATCHES` batches
    drawn from its jets, so that only an outlier needs the last, which holds any batch of `slots` slots (every
    group at `slots`, dense capacities; about twice the work of the others on Pythia jets). A run compiles
    these and nothing else, whatever its data; every process draws the same batches."""
    own = sorted((plan_layout(lengths, slots, shards, groups, slot_multiple) for lengths in sample), key=plan_work)
    plans = [envelope(own[:max(1, int(np.ceil(f * len(own))))]) for f in coverage_fractions(count - 1)]
    if count > 1:
        jets, rng = np.concatenate(sample), np.random.default_rng(0)
        drawn = [plan_layout(rng.choice(jets, len(sample[0])), slots, shards, groups, slot_multiple)
                 for _ in range(RESAMPLED_BATCHES)]
        plans.append(envelope(own + drawn))
    plans.append(plan_layout(np.full(len(sample[0]), slots), slots, shards, groups, slot_multiple))
    return list(dict.fromkeys(plans))  # in order, without repeats


def bounded_slots(sample, slots, slot_multiple, count):
    """`count` slot counts (at most) for dense batches like `sample`: the bucket of the longest jet that the
    k-th lightest `coverage_fractions(count)[k]` of the sample's batches need, and `slots` itself."""
    needed = np.sort([slot_bucket(max(int(np.max(lengths)), 1), slot_multiple, slots) for lengths in sample])
    chosen = [int(needed[max(1, int(np.ceil(f * len(needed)))) - 1]) for f in coverage_fractions(count)]
    return sorted(set(chosen + [slots]))


@functools.lru_cache(maxsize=None)
def _triangle(slots):
    """Index of the pair (a, c), a >= c, in the row-major lower triangle of `slots` x `slots`: a(a+1)/2 + c,
    for every ordered (a, c) (symmetric), and the (a, c) of every triangle index."""
    a, c = np.tril_indices(slots)
    index = np.zeros((slots, slots), np.int32)
    index[a, c] = index[c, a] = np.arange(len(a))
    return index, a.astype(np.int32), c.astype(np.int32)


def key_mask_bias(key_mask):
    """(..., S) key mask -> additive attention bias (..., 1, 1, S): 0 for real keys, NEG_INF for the others."""
    return jnp.where(key_mask, 0.0, NEG_INF)[..., None, None, :]


def _take(x, index):
    """x[index] along axis 0; indices past the end give zeros (and no gradient)."""
    return jnp.take(x, index, axis=0, mode="fill", fill_value=0)


class DenseLayout:
    """Every slot of the (B, S) input: rows are (B, S, ...), the pair MLP runs on each jet's slot triangle."""

    def __init__(self, mask):
        self.mask = mask
        self.slots = mask.shape[1]
        index, self._a, self._c = _triangle(self.slots)
        self._index = index

    # particles
    def rows(self, x):
        return x

    @property
    def row_mask(self):
        return self.mask

    def to_dense(self, rows):
        return rows

    def per_jet(self, values):
        """Per-jet values (B,) broadcast to the rows."""
        return values[:, None, None]

    # pairs
    def pair_rows(self, rows):
        return rows[:, self._a], rows[:, self._c]

    @property
    def pair_mask(self):
        return self.mask[:, self._a] & self.mask[:, self._c]

    def pair_bias(self, pairs):
        """Pair bias (B, H, S, S) of each group from the pair MLP's output rows (B, T, H)."""
        return [jnp.moveaxis(jnp.take(pairs, self._index, axis=1), -1, 1)]

    # attention
    def attention_bias(self, pair_biases=None):
        """The additive bias of self-attention per group: the pair bias (if any) and the key mask."""
        mask = key_mask_bias(self.mask)
        return [mask if pair_biases is None else pair_biases[0] + mask]

    def self_attention(self, core, q, k, v, biases):
        return core(q, k, v, biases[0])

    def class_attention(self, core, q, k_cls, v_cls, k, v):
        key_mask = jnp.concatenate([jnp.ones_like(self.mask[:, :1]), self.mask], axis=1)
        return core(q, jnp.concatenate([k_cls, k], axis=1), jnp.concatenate([v_cls, v], axis=1),
                    key_mask_bias(key_mask))


class PackedLayout:
    """Real particles and pairs packed into rows (module docstring); `plan` gives the static shapes.

    All index arithmetic runs per shard under `jax.vmap`. Per shard: the packed particle p is the p-th real
    slot in (jet, slot) order; jet b's k-th real particle sits at row offset[b] + k, and its real pair
    (a, c), a >= c, at pair row pair_offset[b] + a(a+1)/2 + c.
    """

    def __init__(self, mask, plan: LayoutPlan):
        batch, self.slots = mask.shape
        if batch != plan.shards * plan.jets_per_shard:
            raise ValueError(f"layout plan for {plan.shards} x {plan.jets_per_shard} jets, batch has {batch}")
        self.plan, self.batch = plan, batch
        self.mask = mask
        index = jax.vmap(self._shard_index)(mask.reshape(plan.shards, -1, self.slots))
        # one shard: no shard axis at all (XLA's CPU reductions are up to 30x slower with a leading axis of 1)
        self.index = index if plan.shards > 1 else jax.tree.map(lambda x: x[0], index)

    def _per_shard(self, fn, *args):
        """fn on each shard's arrays (the leading axis of every argument when there are several shards)."""
        return fn(*args) if self.plan.shards == 1 else jax.vmap(fn)(*args)

    def _shard_index(self, mask):
        """Every gather index of one shard (a dict of int32 / bool arrays)."""
        plan, jets = self.plan, self.plan.jets_per_shard
        lengths = jnp.sum(mask, axis=1, dtype=jnp.int32)
        offset = jnp.cumsum(lengths) - lengths
        source = jnp.nonzero(mask.reshape(-1), size=plan.particles, fill_value=mask.size)[0].astype(jnp.int32)
        row = jnp.arange(plan.particles, dtype=jnp.int32)
        valid = row < jnp.sum(lengths)
        jet = jnp.where(valid, source // self.slots, jets)
        rank_in_jet = row - jnp.take(offset, jet, mode="clip")

        order = jnp.argsort(lengths, stable=True).astype(jnp.int32)  # jets by increasing multiplicity
        jet_rank = jnp.argsort(order).astype(jnp.int32)
        start, starts = 0, []
        group_jets, group_index = [], []
        for jets_g, slots_g in plan.groups:
            members = order[start:start + jets_g]
            slot = jnp.arange(slots_g, dtype=jnp.int32)
            inside = slot[None] < lengths[members][:, None]
            group_jets.append(members)
            group_index.append(jnp.where(inside, offset[members][:, None] + slot[None], plan.particles))
            starts.append(start)
            start += jets_g
        # where each packed particle sits in the concatenation of the flattened groups
        rank_base = np.zeros(jets, np.int32)
        flat = 0
        for (jets_g, slots_g), s in zip(plan.groups, starts):
            rank_base[s:s + jets_g] = flat + slots_g * np.arange(jets_g)
            flat += jets_g * slots_g
        grouped_row = jnp.where(valid, jnp.asarray(rank_base)[jnp.take(jet_rank, jet, mode="clip")] + rank_in_jet,
                                flat)

        pair_counts = lengths * (lengths + 1) // 2
        pair_end = jnp.cumsum(pair_counts)
        pair_offset = pair_end - pair_counts
        pair = jnp.arange(plan.pairs, dtype=jnp.int32)
        pair_valid = pair < pair_end[-1]
        pair_jet = jnp.minimum(jnp.searchsorted(pair_end, pair, side="right"), jets - 1)
        _, tri_a, tri_c = _triangle(max(s for _, s in plan.groups))
        within = jnp.clip(pair - pair_offset[pair_jet], 0, len(tri_a) - 1)
        pair_i = jnp.where(pair_valid, offset[pair_jet] + jnp.asarray(tri_a)[within], plan.particles)
        pair_j = jnp.where(pair_valid, offset[pair_jet] + jnp.asarray(tri_c)[within], plan.particles)
        group_pairs = []
        for members, (jets_g, slots_g) in zip(group_jets, plan.groups):
            tri, _, _ = _triangle(slots_g)
            slot = np.arange(slots_g)
            inside = (slot[None, :, None] < lengths[members][:, None, None]) & (
                slot[None, None, :] < lengths[members][:, None, None])
            group_pairs.append(jnp.where(inside, pair_offset[members][:, None, None] + jnp.asarray(tri)[None],
                                         plan.pairs))
        dense = jnp.where(mask.reshape(-1), jnp.cumsum(mask.reshape(-1)) - 1, plan.particles).reshape(mask.shape)
        return dict(source=source, valid=valid, jet=jet, jet_rank=jet_rank, grouped_row=grouped_row,
                    group_jets=group_jets, group_index=group_index, pair_i=pair_i, pair_j=pair_j,
                    pair_valid=pair_valid, group_pairs=group_pairs, dense=dense.astype(jnp.int32))

    # jets: (B, ...) <-> ([shards,] B / shards, ...)
    def _shard_jets(self, x):
        return x if self.plan.shards == 1 else x.reshape(self.plan.shards, -1, *x.shape[1:])

    def _unshard_jets(self, x):
        return x if self.plan.shards == 1 else x.reshape(self.batch, *x.shape[2:])

    def _take(self, x, index):
        return self._per_shard(_take, x, index)

    # particles
    def rows(self, x):
        """Dense per-slot values (B, S, ...) -> packed rows ([shards,] particles, ...)."""
        flat = self._shard_jets(x.reshape(self.batch * self.slots, *x.shape[2:]))
        return self._take(flat, self.index["source"])

    @property
    def row_mask(self):
        return self.index["valid"]

    def to_dense(self, rows):
        """Packed rows -> (B, S, ...) with zeros in every slot that is not a real particle."""
        return self._unshard_jets(self._take(rows, self.index["dense"]))

    def per_jet(self, values):
        """Per-jet values (B,) on the rows of their particles."""
        return self._take(self._shard_jets(values), self.index["jet"])[..., None]

    # pairs
    def pair_rows(self, rows):
        return self._take(rows, self.index["pair_i"]), self._take(rows, self.index["pair_j"])

    @property
    def pair_mask(self):
        return self.index["pair_valid"]

    def pair_bias(self, pairs):
        """Pair bias ([shards,] jets_g, H, S_g, S_g) of each group from the pair rows ([shards,] pairs, H)."""
        return [jnp.moveaxis(self._take(pairs, index), -1, -3) for index in self.index["group_pairs"]]

    # attention
    def _groups(self, rows):
        return [self._take(rows, index) for index in self.index["group_index"]]

    def _ungroup(self, grouped):
        lead = 0 if self.plan.shards == 1 else 1
        flat = jnp.concatenate([g.reshape(*g.shape[:lead], -1, *g.shape[lead + 2:]) for g in grouped], axis=lead)
        return self._take(flat, self.index["grouped_row"])

    def attention_bias(self, pair_biases=None):
        """The additive bias of self-attention per group: the pair bias (if any) and the key mask."""
        masks = [key_mask_bias(index < self.plan.particles) for index in self.index["group_index"]]
        return masks if pair_biases is None else [p + m for p, m in zip(pair_biases, masks)]

    def self_attention(self, core, q, k, v, biases):
        """`core` on each group's slots with its bias (`attention_bias`); q, k, v are rows ([shards,] particles,
        H, D)."""
        groups = zip(self._groups(q), self._groups(k), self._groups(v), biases)
        return self._ungroup([self._fold(core, qg, kg, vg, bias) for qg, kg, vg, bias in groups])

    def class_attention(self, core, q, k_cls, v_cls, k, v):
        """Class attention per group: the class token q (B, 1, H, D) of each jet attends to its own
        [k_cls, v_cls] (B, 1, H, D) and to its particles' rows k, v (shards, particles, H, D)."""
        jets = [self._shard_jets(x) for x in (q, k_cls, v_cls)]
        out = []
        for members, kg, vg, index in zip(self.index["group_jets"], self._groups(k), self._groups(v),
                                          self.index["group_index"]):
            qg, kcg, vcg = (self._take(x, members) for x in jets)
            key_mask = jnp.concatenate([jnp.ones_like(index[..., :1], bool), index < self.plan.particles], axis=-1)
            out.append(self._fold(core, qg, jnp.concatenate([kcg, kg], axis=-3),
                                  jnp.concatenate([vcg, vg], axis=-3), key_mask_bias(key_mask)))
        by_rank = jnp.concatenate(out, axis=0 if self.plan.shards == 1 else 1)
        return self._unshard_jets(self._take(by_rank, self.index["jet_rank"]))

    def _fold(self, core, q, k, v, bias):
        """`core` over ([shards,] jets, ...) arrays, shards and jets folded into one batch axis."""
        if self.plan.shards == 1:
            return core(q, k, v, bias)
        flat = lambda x: x.reshape(-1, *x.shape[2:])
        out = core(flat(q), flat(k), flat(v), flat(bias))
        return out.reshape(*q.shape[:2], *out.shape[1:])

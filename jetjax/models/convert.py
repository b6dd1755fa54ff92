"""weaver ParT (`weaver.nn.model.ParticleTransformer`) state_dicts <-> jetjax ParT variables, both ways.

Accepts a mapping name -> array (PyTorch layouts), an `.npz` file (optionally with a key prefix such as
'param/'), or a PyTorch `.pt`/`.pth` checkpoint when torch happens to be installed (torch is not a
dependency). Keys may carry the wrapper's 'mod.' prefix. Every tensor must be used and every jetjax leaf
filled, with matching shapes; otherwise a ValueError names the offending key.

Layout changes: Linear/Conv1d weights (out, in[, 1]) -> Dense kernels (in, out); the packed attention
in-projection (3E, E) -> separate query/key/value kernels; BatchNorm running_mean/var -> batch_stats
mean/var. HeadScale (docs/formulas.md §2.8): the reference scales head h's 16 output channels by c_h and lays the
result out as channel d*H + h; jetjax scales channel k by c[k mod H] without a permutation, so the
permutation is folded into the rows of the attention output projection here.

weaver-core 0.5 dropped that permutation: it scales channel h*D + d by c_h and keeps the order, so the same
tensors are a different model there (the reference file's logits move by up to 2.5 in weaver 0.5.3). A 0.5
state_dict (`weaver_version="0.5"`) is the same model with the residual stream (the E channels the blocks
add to) in head-major order: every tensor axis that indexes the stream is permuted, HeadScale c is kept, and
the output projection rows are already head-major. 0.5 files name the packed projection `attn.in_proj.weight`
(`attn.in_proj_weight` is read too).

`matching_part(variables)` is the jetjax ParT that converted variables fit. `to_state_dict` writes the inverse
(a jetjax ParT of the reference architecture -> weaver tensors in either layout) and `save_state_dict` stores
it as weaver loads it: `.pt` (torch) or `.npz` (numpy only).
"""
import re
from pathlib import Path

import numpy as np

from jetjax.models.part import ParT


def load_state_dict(path, prefix=""):
    """Read a state_dict from an .npz (keys starting with `prefix`, prefix removed) or a torch checkpoint."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"ParT checkpoint {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path) as data:
            return {k[len(prefix):]: data[k] for k in data.files if k.startswith(prefix)}
    try:
        import torch
    except ImportError as err:
        raise ImportError(f"reading {path} needs PyTorch (pip install torch), or export the state_dict "
                          "to an .npz of numpy arrays") from err
    obj = torch.load(path, map_location="cpu", weights_only=True)
    state = obj.get("state_dict", obj.get("model", obj)) if isinstance(obj, dict) else obj
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


WEAVER_VERSIONS = ("0.4", "0.5")
"""State_dict layouts: "0.4" for weaver-core <= 0.4.x (the ParT paper's v0.4.17), "0.5" for weaver-core 0.5.x."""


def _head_scale_permutation(embed, num_heads):
    """perm[k] = reference output channel that jetjax channel k holds (k = d*H + h <- h*D + d)."""
    head_dim = embed // num_heads
    k = np.arange(embed)
    return (k % num_heads) * head_dim + k // num_heads


def _check_version(weaver_version):
    if weaver_version not in WEAVER_VERSIONS:
        raise ValueError(f"weaver_version={weaver_version!r} is not one of {WEAVER_VERSIONS}: '0.4' for weaver-core "
                         "<= 0.4.x (the ParT paper's models), '0.5' for weaver-core 0.5.x")


_BLOCK_STREAM_AXES = {"pre_attn_norm.weight": 0, "pre_attn_norm.bias": 0, "post_attn_norm.weight": 0,
                      "post_attn_norm.bias": 0, "pre_fc_norm.weight": 0, "pre_fc_norm.bias": 0, "w_resid": 0,
                      "fc2.weight": 0, "fc2.bias": 0, "attn.in_proj_weight": 1, "fc1.weight": 1, "fc1_g.weight": 1,
                      "attn.gate_proj.weight": 1}
"""The axis of each block tensor that indexes the residual stream (out_proj rows are head-major in both layouts)."""


def _residual_stream_axes(state):
    """{tensor name: axis} of every tensor axis of `state` (0.4 names) that indexes the residual stream."""
    last = 3 * (_count(state, r"embed\.embed\.(\d+)\.") // 2) - 2  # the last Linear of the [LN, Linear, GELU]s
    axes = {f"embed.embed.{last}.weight": 0, f"embed.embed.{last}.bias": 0, "norm.weight": 0, "norm.bias": 0,
            "fc.0.weight": 1, "cls_token": 2}
    for name in state:
        block = re.fullmatch(r"(cls_)?blocks\.\d+\.(.+)", name)
        if block and block.group(2) in _BLOCK_STREAM_AXES:
            axes[name] = _BLOCK_STREAM_AXES[block.group(2)]
    return axes


def _embed_width(state):
    if "norm.weight" not in state:
        raise ValueError("ParT state_dict has no tensor 'norm.weight' (the final LayerNorm): is it a weaver "
                         "ParticleTransformer?")
    return len(state["norm.weight"])


def _permute_residual_stream(state, order):
    """`state` with every residual-stream axis reordered: new[..., m, ...] = old[..., order[m], ...]."""
    axes = _residual_stream_axes(state)
    return {name: np.take(value, order, axis=axes[name]) if name in axes else value for name, value in state.items()}


def _dense(w, b):
    w = np.asarray(w)
    if w.ndim == 3:  # Conv1d with kernel size 1
        w = w[:, :, 0]
    return {"kernel": w.T} if b is None else {"kernel": w.T, "bias": np.asarray(b)}


def _linear(state, name, rows=slice(None)):
    """A Linear / Conv1d `name` (its `rows` of the output) as a Dense; weaver's ParT v3 has Linears without bias."""
    bias = state[f"{name}.bias"][rows] if f"{name}.bias" in state else None
    return _dense(state[f"{name}.weight"][rows], bias)


def _norm(state, name):
    """A LayerNorm (weight, bias) or RMSNorm (weight) `name`."""
    return {"scale": state[f"{name}.weight"], **({"bias": state[f"{name}.bias"]} if f"{name}.bias" in state else {})}


def _batch_norm(state, name):
    return ({"scale": state[f"{name}.weight"], "bias": state[f"{name}.bias"]},
            {"mean": state[f"{name}.running_mean"], "var": state[f"{name}.running_var"]})


_OPTIONAL_BLOCK_PARTS = {"attn.q_norm": ("attn", "q_norm", _norm), "attn.k_norm": ("attn", "k_norm", _norm),
                         "attn.gate_proj": ("attn", "gate", _linear), "fc1_g": ("ffn", "fc1_gate", _linear),
                         "post_fc_norm": ("ffn", "post_fc_norm", _norm), "post_attn_norm": ("", "post_attn_norm", _norm)}
"""Block tensors of some ParT versions only (weaver name -> (jetjax submodule, name, converter))."""


def _block(state, name, num_heads):
    w_in = state[f"{name}.attn.in_proj_weight"]
    embed = w_in.shape[1]
    perm = _head_scale_permutation(embed, num_heads)
    packed = {"weight": w_in, **({"bias": state[f"{name}.attn.in_proj_bias"]}
                                 if f"{name}.attn.in_proj_bias" in state else {})}
    attn = {role: _linear({f"in.{k}": v for k, v in packed.items()}, "in", slice(i * embed, (i + 1) * embed))
            for i, role in enumerate(("query", "key", "value"))}
    attn["out"] = _linear(state, f"{name}.attn.out_proj", perm)
    ffn = {"fc1": _linear(state, f"{name}.fc1"), "fc2": _linear(state, f"{name}.fc2")}
    block = {"attn": attn, "ffn": ffn, "pre_attn_norm": _norm(state, f"{name}.pre_attn_norm"),
             "pre_fc_norm": _norm(state, f"{name}.pre_fc_norm")}
    for weaver_name, (part, ours, convert) in _OPTIONAL_BLOCK_PARTS.items():
        if f"{name}.{weaver_name}.weight" in state:
            (block[part] if part else block)[ours] = convert(state, f"{name}.{weaver_name}")
    for weaver_name, ours in (("c_attn", "head_scale"), ("w_resid", "resid_scale")):
        if f"{name}.{weaver_name}" in state:
            block[ours] = state[f"{name}.{weaver_name}"]
    return block


def _count(state, pattern):
    return len({m.group(1) for k in state if (m := re.match(pattern, k))})


_NORM = re.compile(r"(?:^|\.)(?:norm|pre_attn_norm|post_attn_norm|pre_fc_norm|post_fc_norm|q_norm|k_norm)\.weight$")


def _check_norms(state):
    """weaver's ParT norms are all LayerNorms (weight, bias) or all RMSNorms (weight; version 3): a bias missing
    from some of them is a broken file, named."""
    norms = sorted(k[:-len(".weight")] for k in state if _NORM.search(k))
    missing = [f"{n}.bias" for n in norms if f"{n}.bias" not in state]
    if missing and len(missing) < len(norms):
        raise ValueError(f"ParT state_dict has no tensor {missing[0]!r} (other norms of the model have a bias)")


def convert_state_dict(state, num_heads=8, weaver_version="0.4"):
    """weaver ParT state_dict (name -> array) -> {'params': ..., 'batch_stats': ...} of `jetjax.models.ParT`.

    The matching jetjax model: `ParT(num_classes=<rows of fc.0.weight>, num_heads=num_heads)` with the
    reference's layer counts and widths (read from the state_dict shapes). Only the reference's
    single-Linear classifier (`fc.0`) or no classifier are supported. `weaver_version`: the layout of
    `state`, "0.4" (weaver-core <= 0.4.x) or "0.5" (weaver-core 0.5.x); see the module docstring.
    """
    _check_version(weaver_version)
    state = {re.sub(r"attn\.in_proj\.(weight|bias)$", r"attn.in_proj_\1", re.sub(r"^(module\.)?(mod\.)?", "", k)):
             np.asarray(v) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    if weaver_version == "0.5":
        state = _permute_residual_stream(state, _head_scale_permutation(_embed_width(state), num_heads))
    used = set()

    class Tracking(dict):
        def __getitem__(self, key):
            if key not in self:
                raise ValueError(f"ParT state_dict has no tensor {key!r}: is it a weaver ParticleTransformer "
                                 "with pair embedding, class blocks and a single-Linear head?")
            used.add(key)
            return dict.__getitem__(self, key)

    _check_norms(state)
    state = Tracking(state)
    params, stats = {"embed": {}, "pair_embed": {}}, {"embed": {}, "pair_embed": {}}
    params["embed"]["input_bn"], stats["embed"]["input_bn"] = _batch_norm(state, "embed.input_bn")
    for i in range(_count(state, r"embed\.embed\.(\d+)\.") // 2):  # [LayerNorm, Linear, GELU] per width
        params["embed"][f"norm_{i}"] = _norm(state, f"embed.embed.{3 * i}")
        params["embed"][f"dense_{i}"] = _linear(state, f"embed.embed.{3 * i + 1}")
    pe = params["pair_embed"]
    pe["input_bn"], stats["pair_embed"]["input_bn"] = _batch_norm(state, "pair_embed.embed.0")
    for i in range(_count(state, r"pair_embed\.embed\.(\d+)\.") // 2):  # after BN: [Conv1d, BN, GELU] per width
        conv, bn = f"pair_embed.embed.{3 * i + 1}", f"pair_embed.embed.{3 * i + 2}"
        pe[f"dense_{i}"] = _linear(state, conv)
        pe[f"bn_{i}"], stats["pair_embed"][f"bn_{i}"] = _batch_norm(state, bn)
    for kind in ("blocks", "cls_blocks"):
        for i in range(_count(state, rf"{kind}\.(\d+)\.")):
            params[f"{kind}_{i}"] = _block(state, f"{kind}.{i}", num_heads)
    params["cls_token"] = state["cls_token"]
    params["norm"] = _norm(state, "norm")
    if "fc.0.weight" in state:
        params["head"] = {"out": _linear(state, "fc.0")}
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"ParT state_dict tensors not understood by the converter: {unused[:5]}"
                         f"{' ...' if len(unused) > 5 else ''} (only the reference configuration is supported)")
    return {"params": params, "batch_stats": stats}


def matching_part(variables, **settings):
    """The jetjax ParT that `variables` (convert_state_dict's result) belong to: widths, layer and head counts,
    FFN ratio and classes read from their shapes, the block options of weaver's ParT versions from the tensors
    present (`style_of`), weaver's FFN (GELU or SwiGLU) and linear head; `settings` set the other ParT fields
    (e.g. dtype)."""
    params = variables["params"]
    embed, pair = params["embed"], params["pair_embed"]
    blocks = [params[k] for k in params if k.startswith("blocks_")]
    cls_blocks = [k for k in params if k.startswith("cls_blocks_")]
    first = (blocks or [params[cls_blocks[0]]])[0]
    widths = [np.shape(embed[f"dense_{i}"]["kernel"])[1] for i in range(sum(k.startswith("dense_") for k in embed))]
    pair_widths = [np.shape(pair[f"dense_{i}"]["kernel"])[1] for i in range(sum(k.startswith("dense_") for k in pair))]
    hidden = np.shape(first["ffn"]["fc1"]["kernel"])[1]
    styles = {name: style_of(params[name], pair_widths[-1]) for name in params if "blocks_" in name}
    if any(style != styles[min(styles)] for style in styles.values()):
        raise ValueError(f"ParT blocks with different options ({styles}): jetjax gives particle and class blocks "
                         "the same ones (weaver: give cls_block_params the block options of block_params)")
    return ParT(num_classes=np.shape(params["head"]["out"]["kernel"])[1] if "head" in params else None,
                embed_dims=tuple(widths), pair_embed_dims=tuple(pair_widths[:-1]), num_heads=pair_widths[-1],
                num_layers=len(blocks), num_cls_layers=len(cls_blocks),
                ffn="swiglu" if "fc1_gate" in first["ffn"] else "gelu", ffn_ratio=hidden / widths[-1],
                layer_scale_init=None, head="linear", **style_of(first, pair_widths[-1]), **settings)


def style_of(block, num_heads):
    """The ParT block options (layers.BlockStyle fields) of a converted block's parameters."""
    attn = block["attn"]
    gate = "none" if "gate" not in attn else (
        "headwise" if np.shape(attn["gate"]["kernel"])[1] == num_heads else "elementwise")
    return dict(norm="layer" if "bias" in block["pre_attn_norm"] else "rms", bias="bias" in attn["query"],
                qk_norm="q_norm" in attn, attn_gate=gate, scale_attn="post_attn_norm" in block,
                scale_fc="post_fc_norm" in block["ffn"], scale_heads="head_scale" in block,
                scale_resids="resid_scale" in block)


def check_compatible(variables, target):
    """Raise a ValueError naming the first leaf whose presence or shape differs between two variable trees."""
    import jax

    got = {jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(variables)}
    want = {jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(target)}
    for key in sorted(set(got) | set(want)):
        if got.get(key) != want.get(key):
            raise ValueError(f"converted ParT variables do not fit the model at {key}: converted shape "
                             f"{got.get(key)}, model expects {want.get(key)} (model config differs from the "
                             "checkpoint)")


def _linear_tensors(dense, conv=False, rows=slice(None)):
    """Dense {kernel (in, out)[, bias]} -> weaver Linear weight (out, in) (Conv1d: (out, in, 1)) [and bias]; `rows`
    of the output."""
    weight = np.asarray(dense["kernel"]).T[rows]
    return {"weight": weight[:, :, None] if conv else weight,
            **({"bias": np.asarray(dense["bias"])[rows]} if "bias" in dense else {})}


def _norm_tensors(p):
    return {"weight": np.asarray(p["scale"]), **({"bias": np.asarray(p["bias"])} if "bias" in p else {})}


def _batch_norm_tensors(p, s):
    return {**_norm_tensors(p), "running_mean": np.asarray(s["mean"]), "running_var": np.asarray(s["var"]),
            "num_batches_tracked": np.zeros((), np.int64)}  # unused in eval mode and by momentum updates


def _block_tensors(block, num_heads):
    attn = block["attn"]
    unpermute = np.argsort(_head_scale_permutation(np.shape(attn["out"]["kernel"])[1], num_heads))
    projections = [_linear_tensors(attn[role]) for role in ("query", "key", "value")]
    tensors = {"attn.in_proj_weight": np.concatenate([p["weight"] for p in projections]),
               **_named("attn.out_proj", _linear_tensors(attn["out"], rows=unpermute)),
               **_named("pre_attn_norm", _norm_tensors(block["pre_attn_norm"])),
               **_named("pre_fc_norm", _norm_tensors(block["pre_fc_norm"])),
               **_named("fc1", _linear_tensors(block["ffn"]["fc1"])), **_named("fc2", _linear_tensors(block["ffn"]["fc2"]))}
    if "bias" in projections[0]:
        tensors["attn.in_proj_bias"] = np.concatenate([p["bias"] for p in projections])
    for weaver_name, (part, ours, _) in _OPTIONAL_BLOCK_PARTS.items():
        source = block[part] if part else block
        if ours in source:
            write = _norm_tensors if "norm" in ours else _linear_tensors
            tensors.update(_named(weaver_name, write(source[ours])))
    for weaver_name, ours in (("c_attn", "head_scale"), ("w_resid", "resid_scale")):
        if ours in block:
            tensors[weaver_name] = np.asarray(block[ours])
    return tensors


def _named(prefix, tensors):
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def _leaf_paths(tree):
    import jax

    return {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)}


def to_state_dict(variables, weaver_version="0.5", ffn="gelu"):
    """jetjax ParT variables {'params', 'batch_stats'} -> weaver `ParticleTransformer` state_dict (name -> numpy).

    The inverse of `convert_state_dict` (same `weaver_version` layouts): `convert_state_dict(to_state_dict(v))`
    gives back `v` bit for bit. Only weaver's architectures have weaver tensors: the reference and its
    version 2 / 3 options (`ffn` 'gelu', or 'swiglu' with fc1_gate tensors; no layer_scale_init, head='linear' or
    no head); BatchNorm `num_batches_tracked` is written as 0. The weaver model to load it into:
    `ParticleTransformer(input_dim=C, num_classes=K, embed_dims=..., pair_embed_dims=..., num_heads=H,
    num_layers=..., num_cls_layers=..., use_pre_activation_pair=False, fc_params=[] (None without a head))` with
    the widths and counts of the jetjax model and its options (`jetjax.export.weaver_model_settings`).
    """
    _check_version(weaver_version)
    params, stats = variables["params"], variables["batch_stats"]
    gated = any("fc1_gate" in params[name]["ffn"] for name in params if "blocks_" in name)
    if gated and ffn != "swiglu":
        raise ValueError(f"a gated feed-forward (fc1_gate) with model.ffn={ffn!r}: weaver's only gated FFN is SwiGLU "
                         "(ffn='swiglu'); the study's GEGLU has no weaver equivalent")
    embed, pair = params["embed"], params["pair_embed"]
    state = {"cls_token": np.asarray(params["cls_token"])}
    state.update(_named("embed.input_bn", _batch_norm_tensors(embed["input_bn"], stats["embed"]["input_bn"])))
    for i in range(sum(k.startswith("dense_") for k in embed)):
        state.update(_named(f"embed.embed.{3 * i}", _norm_tensors(embed[f"norm_{i}"])))
        state.update(_named(f"embed.embed.{3 * i + 1}", _linear_tensors(embed[f"dense_{i}"])))
    state.update(_named("pair_embed.embed.0", _batch_norm_tensors(pair["input_bn"], stats["pair_embed"]["input_bn"])))
    for i in range(sum(k.startswith("dense_") for k in pair)):
        state.update(_named(f"pair_embed.embed.{3 * i + 1}", _linear_tensors(pair[f"dense_{i}"], conv=True)))
        state.update(_named(f"pair_embed.embed.{3 * i + 2}",
                            _batch_norm_tensors(pair[f"bn_{i}"], stats["pair_embed"][f"bn_{i}"])))
    num_heads = np.shape(pair[f"dense_{sum(k.startswith('dense_') for k in pair) - 1}"]["kernel"])[1]
    for name in (name for name in params if name.startswith(("blocks_", "cls_blocks_"))):
        kind, i = name.rsplit("_", 1)
        state.update(_named(f"{kind}.{i}", _block_tensors(params[name], num_heads)))
    state.update(_named("norm", _norm_tensors(params["norm"])))
    if "head" in params:
        state.update(_named("fc.0", _linear_tensors(params["head"]["out"])))
    unwritten = sorted(_leaf_paths(variables) - _leaf_paths(convert_state_dict(state, num_heads)))
    if unwritten:
        raise ValueError(f"jetjax ParT variables with no tensor in weaver's ParticleTransformer: "
                         f"{unwritten[:3]}{' ...' if len(unwritten) > 3 else ''}; only weaver's architectures "
                         "(model.ffn='gelu' or 'swiglu', model.layer_scale_init=None, model.head='linear') "
                         "can be written")
    if weaver_version == "0.5":
        order = np.argsort(_head_scale_permutation(len(state["norm.weight"]), num_heads))
        state = _permute_residual_stream(state, order)
        state = {re.sub(r"attn\.in_proj_(weight|bias)$", r"attn.in_proj.\1", k): v for k, v in state.items()}
    return state


def save_state_dict(state, path):
    """Write a state_dict (name -> numpy) as weaver reads it: a `.pt` file of torch tensors (needs torch) or
    an `.npz` of numpy arrays (read back with `load_state_dict`)."""
    path = Path(path)
    if path.suffix == ".npz":
        np.savez(path, **state)
        return path
    if path.suffix not in (".pt", ".pth"):
        raise ValueError(f"{path}: a weaver state_dict is written as .pt/.pth (torch) or .npz")
    try:
        import torch
    except ImportError as err:
        raise ImportError(f"writing {path} needs PyTorch (pip install torch); write an .npz instead") from err
    torch.save({k: torch.tensor(np.asarray(v)) for k, v in state.items()}, path)
    return path

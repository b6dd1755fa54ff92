"""Load a weaver ParT (weaver-core <= v0.4.x `ParticleTransformer`) state_dict into jetjax variables.

Accepts a mapping name -> array (PyTorch layouts), an `.npz` file (optionally with a key prefix such as
'param/'), or a PyTorch `.pt`/`.pth` checkpoint when torch happens to be installed (torch is not a
dependency). Keys may carry the wrapper's 'mod.' prefix. Every tensor must be used and every jetjax leaf
filled, with matching shapes; otherwise a ValueError names the offending key.

Layout changes: Linear/Conv1d weights (out, in[, 1]) -> Dense kernels (in, out); the packed attention
in-projection (3E, E) -> separate query/key/value kernels; BatchNorm running_mean/var -> batch_stats
mean/var. HeadScale (PART_SPEC §2.8): the reference scales head h's 16 output channels by c_h and lays the
result out as channel d*H + h; jetjax scales channel k by c[k mod H] without a permutation, so the
permutation is folded into the rows of the attention output projection here.
"""
import re
from pathlib import Path

import numpy as np


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


def _head_scale_permutation(embed, num_heads):
    """perm[k] = reference output channel that jetjax channel k holds (k = d*H + h <- h*D + d)."""
    head_dim = embed // num_heads
    k = np.arange(embed)
    return (k % num_heads) * head_dim + k // num_heads


def _dense(w, b):
    w = np.asarray(w)
    if w.ndim == 3:  # Conv1d with kernel size 1
        w = w[:, :, 0]
    return {"kernel": w.T, "bias": np.asarray(b)}


def _norm(state, name):
    return {"scale": state[f"{name}.weight"], "bias": state[f"{name}.bias"]}


def _batch_norm(state, name):
    return ({"scale": state[f"{name}.weight"], "bias": state[f"{name}.bias"]},
            {"mean": state[f"{name}.running_mean"], "var": state[f"{name}.running_var"]})


def _block(state, name, num_heads):
    w_in, b_in = state[f"{name}.attn.in_proj_weight"], state[f"{name}.attn.in_proj_bias"]
    embed = w_in.shape[1]
    perm = _head_scale_permutation(embed, num_heads)
    attn = {role: _dense(w_in[i * embed:(i + 1) * embed], b_in[i * embed:(i + 1) * embed])
            for i, role in enumerate(("query", "key", "value"))}
    attn["out"] = _dense(state[f"{name}.attn.out_proj.weight"][perm], state[f"{name}.attn.out_proj.bias"][perm])
    ffn = {"fc1": _dense(state[f"{name}.fc1.weight"], state[f"{name}.fc1.bias"]),
           "post_fc_norm": _norm(state, f"{name}.post_fc_norm"),
           "fc2": _dense(state[f"{name}.fc2.weight"], state[f"{name}.fc2.bias"])}
    return {"attn": attn, "head_scale": state[f"{name}.c_attn"], "resid_scale": state[f"{name}.w_resid"],
            "pre_attn_norm": _norm(state, f"{name}.pre_attn_norm"),
            "post_attn_norm": _norm(state, f"{name}.post_attn_norm"),
            "pre_fc_norm": _norm(state, f"{name}.pre_fc_norm"), "ffn": ffn}


def _count(state, pattern):
    return len({m.group(1) for k in state if (m := re.match(pattern, k))})


def convert_state_dict(state, num_heads=8):
    """weaver ParT state_dict (name -> array) -> {'params': ..., 'batch_stats': ...} of `jetjax.models.ParT`.

    The matching jetjax model: `ParT(num_classes=<rows of fc.0.weight>, num_heads=num_heads)` with the
    reference's layer counts and widths (read from the state_dict shapes). Only the reference's
    single-Linear classifier (`fc.0`) or no classifier are supported.
    """
    state = {re.sub(r"^(module\.)?(mod\.)?", "", k): np.asarray(v) for k, v in state.items()
             if not k.endswith("num_batches_tracked")}
    used = set()

    class Tracking(dict):
        def __getitem__(self, key):
            if key not in self:
                raise ValueError(f"ParT state_dict has no tensor {key!r}: is it a weaver <= v0.4 ParticleTransformer "
                                 "with pair embedding, scale_attn/fc/heads/resids on and a single-Linear head?")
            used.add(key)
            return dict.__getitem__(self, key)

    state = Tracking(state)
    params, stats = {"embed": {}, "pair_embed": {}}, {"embed": {}, "pair_embed": {}}
    params["embed"]["input_bn"], stats["embed"]["input_bn"] = _batch_norm(state, "embed.input_bn")
    for i in range(_count(state, r"embed\.embed\.(\d+)\.") // 2):  # [LayerNorm, Linear, GELU] per width
        params["embed"][f"norm_{i}"] = _norm(state, f"embed.embed.{3 * i}")
        params["embed"][f"dense_{i}"] = _dense(state[f"embed.embed.{3 * i + 1}.weight"],
                                               state[f"embed.embed.{3 * i + 1}.bias"])
    pe = params["pair_embed"]
    pe["input_bn"], stats["pair_embed"]["input_bn"] = _batch_norm(state, "pair_embed.embed.0")
    for i in range(_count(state, r"pair_embed\.embed\.(\d+)\.") // 2):  # after BN: [Conv1d, BN, GELU] per width
        conv, bn = f"pair_embed.embed.{3 * i + 1}", f"pair_embed.embed.{3 * i + 2}"
        pe[f"dense_{i}"] = _dense(state[f"{conv}.weight"], state[f"{conv}.bias"])
        pe[f"bn_{i}"], stats["pair_embed"][f"bn_{i}"] = _batch_norm(state, bn)
    for kind in ("blocks", "cls_blocks"):
        for i in range(_count(state, rf"{kind}\.(\d+)\.")):
            params[f"{kind}_{i}"] = _block(state, f"{kind}.{i}", num_heads)
    params["cls_token"] = state["cls_token"]
    params["norm"] = _norm(state, "norm")
    if "fc.0.weight" in state:
        params["head"] = {"out": _dense(state["fc.0.weight"], state["fc.0.bias"])}
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"ParT state_dict tensors not understood by the converter: {unused[:5]}"
                         f"{' ...' if len(unused) > 5 else ''} (only the reference configuration is supported)")
    return {"params": params, "batch_stats": stats}


def check_compatible(variables, target):
    """Raise a ValueError naming the first leaf whose presence or shape differs between two variable trees."""
    import jax

    got = {jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(variables)}
    want = {jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(target)}
    for key in sorted(set(got) | set(want)):
        if got.get(key) != want.get(key):
            raise ValueError(f"converted ParT variables do not fit the model at {key}: converted shape "
                             f"{got.get(key)}, model expects {want.get(key)} (model config differs from the checkpoint)")

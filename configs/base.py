"""Settings shared by every experiment (the study's §2.2-3): each config file starts from `base.get_config()`
and overrides what it changes. Keys map one to one onto the code: `model` -> jetjax.models.ParT fields,
`objective` -> jetjax.objectives.build settings, `optimizer` -> jetjax.optim.make_optimizer arguments,
`data` -> jetjax.data.pipeline arguments."""
import ml_collections
from ml_collections import config_dict

from configs import defaults


def get_config():
    c = ml_collections.ConfigDict()
    c.mode = "supervised"  # supervised | pretrain | finetune | probe | evaluate | predict | study | efficiency | scaling
    c.seed = 0

    c.data = ml_collections.ConfigDict(dict(
        root=config_dict.placeholder(str),   # JetClass-II folder (or train/val/test subfolders)
        format="any",                        # files read: parquet | root | h5 | npz | any
        synthetic_jets_per_group=0,          # > 0 and no root: generate a synthetic data set of this size in workdir/data
        scheme="jetclass2_7",                # label scheme (jetjax.data.classes.SCHEMES)
        feature_set="kin",                   # kin | kinpid | full
        num_particles=128,                   # P
        epoch_size=2_000_000,                # sampled training jets per epoch
        val_size=2_000_000,                  # balanced validation jets per epoch
        skip_bad_files=False,
        length_grouping=0,                   # > 1: training batches of similar multiplicity (windows of N batches)
        workers=0,                           # >= 1: training files decoded and features built in N processes
        task=ml_collections.ConfigDict(dict(  # a task of your own (jetjax.data.classes.scheme_from_task), named
            classes=(),                       #   data.scheme; empty: the built-in scheme data.scheme
            labels=(),                        #   per class: stored label(s) in column data.columns.jet_label
            label_branches=(),                #   or one one-hot branch per class
            fractions=(),                     #   sampling fractions (default: equal)
            file_groups=(),                   #   file-name prefix of each class's files (default: any file)
            titles=(),                        #   table titles (default: the class names)
            background=config_dict.placeholder(str),  # background class of the working-point tables
        )),
        columns=ml_collections.ConfigDict({n: n for n in defaults.COLUMNS}),  # canonical -> your files' name
        tree="tree",                         # ROOT files: the tree to read
        label_budget=0,                      # > 0: train on this many labelled jets only (jetjax.data.labelled)
    ))
    c.model = ml_collections.ConfigDict(dict(
        embed_dims=(128, 512, 128), pair_embed_dims=(64, 64, 64), num_heads=8, num_layers=8, num_cls_layers=2,
        pair_mass="stable",            # stable | reference: ln m^2 of the pair taken massless (exact), or as weaver
                                       # (E^2 - |p|^2: rounding noise for massless pairs); jetjax.physics
        ffn="gelu", ffn_ratio=4.0, dropout=0.1, attn_dropout=0.1, activation_dropout=0.1, drop_path=0.0,
        layer_scale_init=config_dict.placeholder(float), head="linear", head_hidden=256, head_dropout=0.1,
        # weaver-core 0.5.3's ParT version options (configs/part_versions.py; docs/formulas.md §8.5)
        norm="layer", bias=True, qk_norm=False, attn_gate="none", scale_attn=True, scale_fc=True, scale_heads=True,
        scale_resids=True,
        dtype="auto"))                # compute dtype: auto = bfloat16 on GPU/TPU, float32 on CPU (jetjax.devices)
    c.objective = ml_collections.ConfigDict(dict(name="supervised"))
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=1e-4, weight_decay=0.01, clip_norm=1.0, schedule="cosine", warmup_steps=0))
    c.train = ml_collections.ConfigDict(dict(
        epochs=20, batch_size=256, log_every=50,
        accumulate=1,                             # updates from batch_size / accumulate jets at a time, averaged
        keep_checkpoints=2,                       # latest checkpoints kept (a damaged one falls back to the one before)
        init_from=config_dict.placeholder(str),   # finetune / probe: the pretraining workdir
    ))
    # mode finetune: what trains (jetjax/finetune.py): method full | adapter (frozen encoder + block mix) | last_k
    # (the last unfreeze_blocks particle blocks + class blocks) | lora (lora_rank, lora_alpha, lora_targets);
    # head_learning_rate: peak lr of the head (None: 0.1 for the adapter, optimizer.learning_rate otherwise)
    c.finetune = defaults.new_section("finetune")
    c.probe = defaults.new_section("probe")      # mode probe: C grid and L-BFGS iterations (jetjax/probe.py)
    c.layout = defaults.new_section("layout")    # how batches are computed (never what): jetjax/feeding.py
    c.compile = defaults.new_section("compile")  # JAX's persistent compilation cache ("": $JAX_COMPILATION_CACHE_DIR
                                                 # or ~/.cache/jetjax/xla; jetjax/compilation.py)
    c.knn = defaults.new_section("knn")          # pretraining: kNN probe at each validation (jetjax/knn_validation.py)
    c.regression = defaults.new_section("regression")  # target: a jet column or 'a/b' to regress instead of the
                                                       # class (jetjax/regression.py); loss mse | huber
    c.evaluate = ml_collections.ConfigDict(dict(
        run=config_dict.placeholder(str),         # evaluate mode: the workdir of the run (default: --workdir)
        embeddings=5000,                          # jets whose embeddings are saved with the predictions
        title=config_dict.placeholder(str),       # the run's row in its tables (default: from mode and labels)
    ))
    return c


def unset_like(section):
    """A ConfigDict with every key of `section` (nested ones too), each unset (None) but of the key's type: so that
    any of them can be given from the command line, e.g. --config.efficiency.pretrain_data.root=DIR."""
    return ml_collections.ConfigDict({
        key: unset_like(value) if isinstance(value, ml_collections.ConfigDict)
        else config_dict.placeholder(section.get_type(key)) for key, value in section.items()})


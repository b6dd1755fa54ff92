"""jetjax command line: `python -m jetjax.main --config configs/<name>.py [--config.a.b=value ...] [--workdir DIR]`.

`config.mode` chooses what runs: supervised, pretrain, finetune (train a run in the workdir, resuming
it if it exists; classifiers end with an evaluation on the test stream), probe (the linear probe of a pretrained
encoder, a logistic regression fitted on its frozen representation: jetjax.probe), evaluate (a trained run's best
checkpoint on the natural test stream), predict (a trained classifier's scores for new files: jetjax.predict),
study (every objective pretrained, fine-tuned and evaluated, then the study's tables and figures: jetjax.study),
efficiency (classifiers from scratch and on a pretrained encoder against the number of labelled jets,
several seeds: jetjax.efficiency) or scaling (one objective pretrained at several model sizes, a power law of
the validation loss in the parameters, a classifier fine-tuned per size: jetjax.scaling). Misspelt keys and
wrongly typed overrides fail before any work.

XLA's compiled programs are kept in JAX's persistent compilation cache (jetjax.compilation: ~/.cache/jetjax/xla
unless config.compile.cache_dir or JAX_COMPILATION_CACHE_DIR names another folder; config.compile.cache=False
turns it off): rerunning a config, the runs of a study that share shapes and a continued study compile nothing
twice.
"""
from jetjax import memory

if __name__ == "__main__":
    memory.keep_freed_memory()  # first, before numpy or jax start a thread (jetjax/memory.py)

from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from jetjax import compilation, efficiency, evaluation, parallel, predict, probe, scaling, study, train

STUDIES = {"study": study, "efficiency": efficiency, "scaling": scaling}
"""Modes that run several runs, and their modules."""
_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the run (default: runs/<config file name>).")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint operation at INFO
    config = _CONFIG.value
    name = config_flags.get_config_filename(flags.FLAGS["config"]).split(":")[0]
    workdir = _WORKDIR.value or f"runs/{Path(name).stem}"
    parallel.initialize_distributed()
    compilation.use_persistent_cache(config)  # before anything compiles
    if config.mode in STUDIES:
        STUDIES[config.mode].run(config, workdir)
    elif config.mode == "evaluate":
        evaluation.evaluate(config, workdir)
    elif config.mode == "predict":
        predict.run(config)
    elif config.mode == "probe":
        probe.fit(config, workdir)
    else:
        train.fit(config, workdir)


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)

"""Codebook usage of a trained VQ-VAE tokenizer over a whole data sample, not per batch: the fraction of its
codes that tokenize at least one real particle of the first `--jets` balanced validation jets, and the
perplexity exp(H) of the code distribution (1 = one code for all, num_codes = uniform). The training log's
`usage` is per batch and bounded by the particles of one batch; this is the figure to compare with "> 50%".

    python -m jetjax.main --config configs/vqvae.py --workdir runs/vqvae [--config ...]
    python experiments/vq_usage.py runs/vqvae [--jets 5000]
"""
import argparse
import json
from pathlib import Path

import jax
import ml_collections
import numpy as np

from jetjax import study
from jetjax.objectives.tokens import VQVAETokens


def code_counts(run, num_jets):
    """Counts of every code over the real particles of the first `num_jets` validation jets."""
    config = ml_collections.ConfigDict(json.loads((Path(run) / "config.json").read_text()))
    targets, num_codes = VQVAETokens(str(run), config.data.feature_set).load(run, None, config.seed)
    tokens = jax.jit(targets)
    counts = np.zeros(num_codes, np.int64)
    for batch in study.validation_sample(config, run, num_jets):
        codes = np.asarray(tokens(batch["features"], batch["mask"]))[batch["mask"]]
        counts += np.bincount(codes, minlength=num_codes)
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="workdir of a 'vqvae' run")
    parser.add_argument("--jets", type=int, default=5_000)
    args = parser.parse_args()
    counts = code_counts(args.run, args.jets)
    p = counts[counts > 0] / counts.sum()
    print(json.dumps({"run": args.run, "jets": args.jets, "particles": int(counts.sum()), "codes": len(counts),
                      "used": int((counts > 0).sum()), "usage": round(float((counts > 0).mean()), 4),
                      "perplexity": round(float(np.exp(-(p * np.log(p)).sum())), 1)}))


if __name__ == "__main__":
    main()

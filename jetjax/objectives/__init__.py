"""Objectives: each a flax module around the shared ParT encoder (the protocol: `base.Objective`), so that one
training engine runs them all through one code path, and one registry (`OBJECTIVES`) from config name to
builder.

  supervised  classifier head, cross-entropy (the ParT reference and the study's "Ours")      supervised.py
  supcon      two augmented views (validation: noise/smearing only), projection head, SupCon   contrastive.py
  jetclr      JetCLR's two views, NT-Xent                                                      contrastive.py
  mpm         30% of real particles removed from everything the encoder sees, decoder
              reconstructs them                                                                masked.py
  clipvae     VAE head on z: pT-weighted Chamfer reconstruction + clipped KL                   clipvae.py
  vicreg, simsiam, moco       joint-embedding objectives on JetCLR's views                     siamese.py
  vqvae, mpm_vq, mpm_kmeans   the particle tokenizer and MPM with token targets                tokens.py
  jepa        MPM's masking; a predictor regresses the tokens an EMA target encoder gives the
              masked particles (I-JEPA)                                                        predictive.py

The losses themselves are pure functions in jetjax/losses.py; docs/objectives.md describes each objective.
"""
from jetjax.objectives import clipvae, contrastive, masked, predictive, siamese, supervised, tokens
from jetjax.objectives.base import EncoderLengths, Objective, ViewObjective, encode, per_view, stack_views
from jetjax.objectives.masked import choose_masked
from jetjax.objectives.supervised import Supervised

OBJECTIVES = {
    "supervised": supervised.build,
    "supcon": contrastive.build_supcon,
    "jetclr": contrastive.build_jetclr,
    "mpm": masked.build,
    "clipvae": clipvae.build,
    "vicreg": siamese.builder(siamese.VICReg),
    "simsiam": siamese.builder(siamese.SimSiam),
    "moco": siamese.builder(siamese.MoCo),
    "vqvae": tokens.build_tokenizer_stage,
    "mpm_vq": tokens.build_mpm_vq,
    "mpm_kmeans": tokens.build_mpm_kmeans,
    "jepa": predictive.build,
}
"""Config name (`objective.name`) -> builder(encoder, feature_set, num_particles, **the objective's config
fields) -> the objective module."""

__all__ = ["OBJECTIVES", "EncoderLengths", "Objective", "Supervised", "ViewObjective", "build", "choose_masked",
           "encode", "per_view", "prepare", "stack_views"]


def build(name, encoder, feature_set="kin", num_particles=128, **settings):
    """The objective `name` around `encoder`; `settings` are that objective's config fields. The input
    `feature_set` ('kin', 'kinpid', 'full') decides MPM's targets; `num_particles` (P) is the most particles a
    jet may hold (JetCLR's splitting fills jets up to it; MPM's null tokens)."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r} (config key 'objective.name'); "
                         f"choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name](encoder, feature_set, num_particles, **settings)


def prepare(model, workdir, data, seed, train_steps=None, first_batches=None):
    """`model` ready to train in `workdir` on the training data `data` (jetjax.data.pipeline settings) for
    `train_steps` steps: an objective whose targets come from outside the train step (MPM's token targets: a
    tokenizer run, K-means centroids fitted on training jets and kept in the workdir) resolves them here, one
    with a schedule over the run (JEPA's momentum, `with_run_steps`) learns its length, a regression head
    standardises its target with the run's `first_batches` (an iterator of batches, only read by such a head:
    `with_training_batches`); the others are ready."""
    if hasattr(model, "prepare_targets"):
        model = model.prepare_targets(workdir, data, seed)
    if hasattr(model, "with_training_batches") and first_batches is not None:
        model = model.with_training_batches(first_batches)
    return model.with_run_steps(train_steps) if hasattr(model, "with_run_steps") and train_steps else model

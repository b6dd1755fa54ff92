"""The kNN probe of a pretraining run's representation, at each of its validation passes (config.knn).

The encoder alone (eval mode, no views or masking) embeds a fixed labelled sample of `knn.train_jets` training
jets and `knn.val_jets` jets of the balanced validation sample, drawn once when the run starts; each
validation jet is classified by the votes of its `knn.k` most similar (cosine) training jets
(`metrics.knn_probe`), and the record gains `knn_accuracy` and `knn_macro_auc`. So the quality of the
representation is tracked while the objective trains, with no classifier trained.
"""

from configs import defaults
from jetjax import metrics, steps
from jetjax.data import pipeline


def probe_samples(config, data, batch_size):
    """(labelled training batches, validation batches) of the probe, as lists of (global) batches; None when the
    run is not a pretraining run or `knn.train_jets` is 0. Drawn with seeds of their own (the training
    stream's and the validation pass's jets are not changed)."""
    knn = defaults.section(config, "knn")  # labelled training jets (0: no probe), validation jets, k
    if config.mode != "pretrain" or not knn.train_jets:
        return None
    if not 1 <= knn.k <= knn.train_jets or knn.val_jets < batch_size or knn.train_jets < batch_size:
        raise ValueError(f"config.knn: need 1 <= k <= train_jets and train_jets, val_jets >= the batch size "
                         f"{batch_size}, got {knn.to_dict()}")
    seed = config.seed + 2
    reference = pipeline.training_sampler(**data, batch_size=batch_size, epoch_size=knn.train_jets, seed=seed)
    queries = pipeline.validation_batches(**data, num_jets=knn.val_jets, batch_size=batch_size, seed=seed)
    return list(reference.batches(0)), list(queries)


def make_embed_step(model):
    """state, batch, plan -> ({}, {'z': the representation}): the encoder of the objective `model` alone, eval
    mode (the evaluation step's form, for feeding.run_eval with a Feeder of the bare jets' lengths)."""

    def embed_step(state, batch, plan):
        variables = {"params": state.params["encoder"], "batch_stats": state.batch_stats["encoder"]}
        out = model.encoder.apply(variables, batch["features"], batch["vectors"], batch["mask"], plan=plan)
        return {}, {"z": out["z"]}

    return steps.jit_inference(embed_step, model)


def knn_metrics(reference, queries, k, num_classes):
    """`knn_accuracy` and `knn_macro_auc` of the validation jets from the run_eval results (embeddings and
    labels) of the two samples."""
    _, values = metrics.knn_probe(reference["embeddings"], reference["labels"], queries["embeddings"],
                                  queries["labels"], k=k, num_classes=num_classes)
    return {"knn_accuracy": values["accuracy"], "knn_macro_auc": values["macro_auc"]}

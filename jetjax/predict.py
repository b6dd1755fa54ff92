"""Apply a trained classifier (the best checkpoint of its workdir) to new files and write its class scores per jet.

    python -m jetjax.main --config configs/predict.py --config.predict.run=runs/x \
        --config.predict.files='new/*.parquet' --config.predict.out=scores.parquet

The files are read as the run was trained (its feature set, particle slots, column names, tree and format;
what differs in the new files in config.data.columns / .tree / .format, labels not needed), chunk by chunk (`predict.chunk_size` jets),
through the engine's evaluation path (feeding.run_eval: Feeder, slot buckets, packed layouts), and each chunk is
written as soon as it is scored, so neither input nor output is ever held whole. Output (parquet, or ROOT tree
`predictions` via uproot when `out` ends in .root), one row per scored jet: `file` (the input path), `row` (the
jet's row in that file), the `predict.carry` columns copied from the input, `score_<class>` (softmax; a regression
run's `prediction`, in the target's units, jetjax/regression.py) and, with
`predict.embeddings`, the representation `z_0 ... z_{E-1}`.
Jets the data stage drops (no particles, broken kinematics) have no row; they are counted in the report. A file
that cannot be read (or lacks a column) is named in the report with the reason, and the others are scored; the
report (`<out>.report.json`: files, jets written, failed files, the data report) is also printed. One host.
"""
import dataclasses
import json
from pathlib import Path

import numpy as np
import tqdm

from jetjax import evaluation, feeding, parallel, steps
from jetjax.data import features, pipeline
from jetjax.data.classes import task_scheme
from jetjax.data.chunks import LABEL_COLUMN, DataError, DataReport, MissingColumnError
from jetjax.data.readers import discover_files, read_chunks

ROOT_TREE = "predictions"
ROW, CARRIED = "row", "carry:"
"""Jet columns predict adds to a chunk: the row in the file, and the carried input columns (prefixed)."""


def input_files(patterns, file_format):
    """The files named by `patterns` (comma-separated paths or globs), sorted."""
    names = [p.strip() for p in patterns.split(",") if p.strip()]
    if not names:
        raise ValueError("config.predict.files is empty: give the input files (paths or globs, comma-separated)")
    groups = discover_files(files=names, file_format=file_format)
    return sorted((p for paths in groups.values() for p in paths), key=str)


def carried_chunks(path, names, chunk_size, tree):
    """{column: values} of the input columns `names` in the same row ranges as readers.read_chunks."""
    if not names:
        while True:
            yield {}
    suffix = Path(path).suffix
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        missing = [n for n in names if n not in parquet.schema_arrow.names]
        batches = () if missing else (
            {n: b.column(n).to_numpy(zero_copy_only=False) for n in names}
            for b in parquet.iter_batches(batch_size=chunk_size, columns=list(names)))
    elif suffix == ".root":
        import uproot

        branches = uproot.open(path)[tree]
        missing = [n for n in names if n not in branches.keys()]
        batches = () if missing else branches.iterate(list(names), step_size=chunk_size, library="np")
    else:
        raise DataError(f"{path}: config.predict.carry copies columns of parquet and ROOT files only")
    if missing:
        raise MissingColumnError(f"{path}: no column(s) {missing} to carry over (config.predict.carry)")
    for batch in batches:
        if any(np.asarray(v).ndim != 1 or np.asarray(v).dtype == object for v in batch.values()):
            raise DataError(f"{path}: config.predict.carry takes one value per jet; {list(names)} has a jagged column")
        yield batch


class Writer:
    """Appends tables (dicts of equal-length columns) to a parquet file or to the ROOT tree `predictions`."""

    def __init__(self, out):
        self.out, self.sink = Path(out), None
        if self.out.suffix not in (".parquet", ".root"):
            raise ValueError(f"config.predict.out={str(out)!r} must end in .parquet or .root")
        self.out.parent.mkdir(parents=True, exist_ok=True)

    def write(self, table):
        if self.out.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            arrow = pa.table(table)
            self.sink = self.sink or pq.ParquetWriter(self.out, arrow.schema)
            self.sink.write_table(arrow)
        elif self.sink is None:
            import uproot

            self.sink = uproot.recreate(self.out)
            self.sink[ROOT_TREE] = table
        else:
            self.sink[ROOT_TREE].extend(table)

    def close(self):
        if self.sink is not None:
            self.sink.close()


def chunk_predictions(chunk, scorer, scheme, embeddings):
    """The output table of a cleaned chunk: file, row, carried columns, scores and (optionally) z."""
    result = scorer(chunk)
    table = {"file": np.full(len(chunk), chunk.source), "row": chunk.jets[ROW]}
    table.update({k.removeprefix(CARRIED): v for k, v in chunk.jets.items() if k.startswith(CARRIED)})
    if "predictions" in result:  # a regression task: the prediction in the target's units
        table["prediction"] = result["predictions"].astype(np.float32)
    else:
        table.update({f"score_{name}": result["scores"][:, k].astype(np.float32) for k, name in enumerate(scheme.names)})
    if embeddings:
        table.update({f"z_{i}": z.astype(np.float32) for i, z in enumerate(result["embeddings"].T)})
    return table


def make_scorer(state, eval_step, feeder, feature_set, num_particles, batch_size, window, embeddings, report):
    """chunk -> feeding.run_eval's result (scores, embeddings) for its jets, in order."""
    def score(chunk):
        batch = features.to_batch(chunk, np.zeros(len(chunk), np.int32), feature_set, num_particles, report)
        batches = ({k: v[i:i + batch_size] for k, v in batch.items()} for i in range(0, len(chunk), batch_size))
        return feeding.run_eval(state, eval_step, feeder, batches, batch_size, window,
                              keep_embeddings=len(chunk) if embeddings else 0)
    return score


def run(config):
    """Score the files of `config.predict` with the best checkpoint of `config.predict.run` (module docstring);
    returns the report."""
    settings = config.predict
    if not settings.run or not settings.out:
        raise ValueError("config.predict.run (the trained classifier's workdir) and config.predict.out (the output "
                         ".parquet or .root file) must be set")
    mesh = parallel.data_mesh()
    run_config, model, state = evaluation.trained_classifier(Path(settings.run), mesh, "predict.run")
    scheme, feature_set = task_scheme(run_config.data), run_config.data.feature_set
    batch_size = settings.batch_size or run_config.train.batch_size
    parallel.check_batch_size(batch_size, mesh)
    data = pipeline.with_overrides(run_config.data, {k: config.data.get(k) for k in ("columns", "tree", "format")})
    column_map = pipeline.column_map(data)
    column_map = dataclasses.replace(column_map, renamed=column_map.renamed + ((LABEL_COLUMN, ""),))  # labels unused
    layout = feeding.layout_settings(run_config)
    report, failed, written = DataReport(), [], 0
    scorer = make_scorer(state, steps.make_eval_step(model), feeding.Feeder(model, mesh, run_config.data.num_particles,
                                                                          layout),
                         feature_set, run_config.data.num_particles, batch_size, layout.eval_window,
                         settings.embeddings, report)
    files = input_files(settings.files or "", data.format)
    writer = Writer(settings.out)
    bar = tqdm.tqdm(unit="jet", unit_scale=True, desc="predict")
    try:
        for path in files:
            offset = 0
            try:
                chunks = read_chunks(path, features.required_particle_columns(feature_set), (), settings.chunk_size,
                                     column_map)
                for chunk, carried in zip(chunks, carried_chunks(path, tuple(settings.carry), settings.chunk_size,
                                                                 column_map.tree)):
                    if carried and len(next(iter(carried.values()))) != len(chunk):
                        raise DataError(f"{path}: carried columns and jets disagree in length at row {offset}")
                    chunk.jets.update({ROW: np.arange(offset, offset + len(chunk)),
                                       **{CARRIED + k: np.asarray(v) for k, v in carried.items()}})
                    offset += len(chunk)
                    bar.update(len(chunk))
                    cleaned = features.clean(chunk, report)
                    if len(cleaned):
                        writer.write(chunk_predictions(cleaned, scorer, scheme, settings.embeddings))
                        written += len(cleaned)
            except DataError as error:  # MissingColumnError included: this file cannot be scored
                failed.append({"path": str(path), "reason": str(error), "rows_read": offset})
    finally:
        bar.close()
        writer.close()
    summary = {"run": str(settings.run), "out": str(settings.out), "files": len(files),
               "files_failed": len(failed), "failed_files": failed, "jets_written": written,
               "data_report": report.as_dict()}
    Path(str(settings.out) + ".report.json").write_text(json.dumps(summary, indent=2))
    print(f"predict: {written} jets of {len(files) - len(failed)} files -> {settings.out}\n{report}")
    for f in failed:
        print(f"predict: could not read {f['path']} (after {f['rows_read']} rows): {f['reason']}")
    if failed and len(failed) == len(files):
        raise DataError(f"none of the {len(files)} input files could be read; see {settings.out}.report.json")
    return summary

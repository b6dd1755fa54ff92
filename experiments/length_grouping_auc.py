"""Does the length-grouped training sampler change what a model learns? Validation macro AUC of the same
small supervised ParT trained with `data.length_grouping` off and on, on Pythia-simulated jets, several seeds.

    python -m jetjax.data.simulate --out runs/bench_jets --jets-per-class 700 --seed 0
    python experiments/length_grouping_auc.py --data runs/bench_jets --seeds 0 1 2 --window 16

Prints one JSON line per run and the mean and spread of the best validation macro AUC per setting. Multiplicity
correlates with class, so batches of similar multiplicity are batches of fewer classes: the figure to watch is
the difference of the means against the spread over seeds.
"""
import argparse
import json
import statistics
from pathlib import Path

from configs import quickstart
from jetjax import train


def config_for(data, seed, window, epochs, epoch_size, val_size):
    c = quickstart.get_config()
    c.data.root, c.data.format = data, "parquet"
    c.data.synthetic_jets_per_group = 0
    c.data.num_particles = 64
    c.data.epoch_size, c.data.val_size = epoch_size, val_size
    c.data.length_grouping = window
    c.train.epochs, c.train.batch_size, c.seed = epochs, 64, seed
    return c


def best_validation_auc(workdir):
    records = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return max(r["val_macro_auc"] for r in records if r["split"] == "val")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="runs/bench_jets")
    parser.add_argument("--out", default="runs/length_grouping_auc")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--window", type=int, default=16, help="data.length_grouping of the grouped runs")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--epoch-size", type=int, default=3_200)
    parser.add_argument("--val-size", type=int, default=1_024)
    args = parser.parse_args()
    results = {}
    for seed in args.seeds:
        for window in (0, args.window):
            workdir = f"{args.out}/window{window}_seed{seed}"
            train.fit(config_for(args.data, seed, window, args.epochs, args.epoch_size, args.val_size), workdir)
            auc = best_validation_auc(workdir)
            results.setdefault(window, []).append(auc)
            print(json.dumps({"length_grouping": window, "seed": seed, "best_val_macro_auc": round(auc, 4)}))
    for window, aucs in results.items():
        spread = statistics.stdev(aucs) if len(aucs) > 1 else float("nan")
        print(json.dumps({"length_grouping": window, "seeds": len(aucs), "mean_val_macro_auc": round(
            statistics.mean(aucs), 4), "std_over_seeds": round(spread, 4)}))


if __name__ == "__main__":
    main()

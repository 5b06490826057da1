"""Domain-adversarial auxiliary task on STS-B (Ganin & Lempitsky, ICML 2015): genre as the domain.

Arms, each over several seeds, MiniLM encoder, same rows, epochs and schedule:

* ``stsb``: STS-B regression alone.
* ``aux``: STS-B + a genre classifier (captions / forums / news) as an ordinary auxiliary task
  (``adversarial: false``): the encoder is taught the genre.
* ``grl``: the same classifier behind a gradient reversal layer (constant λ = --grl-lambda): the
  encoder is pushed to hide the genre.
* ``grl_annealed``: the paper's schedule, λ_p = λ_max·(2/(1+exp(−10p)) − 1) over training
  progress p, with λ_max = --annealed-lambda (1.0 in the paper).

Model selection: best epoch on STS-B validation Pearson (never the genre task: a good adversary
means a *low* genre accuracy). Reported on sts-test.tsv: Pearson, Spearman, and the genre
head's accuracy next to the majority-genre rate.

    python benchmarks/nlp_domain.py --seeds 0 1      # writes nlp_domain.csv / nlp_domain.md to --out

``--unseen main-forums`` is the domain-adaptation setting the GRL was made for: STS-B trains
and selects on the other genres only, the genre task sees the texts of *every* genre's training
split (the unseen genre's unlabelled target-domain texts included, as in Ganin & Lempitsky), and
STS-B is also scored on the unseen genre's test rows ("unseen" columns).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from mtlkit.nlp.readers.glue import read_sts  # noqa: E402

from nlp_common import cached_json, markdown_table, mean_std, report, run_config, write_csv  # noqa: E402

ARMS = ("stsb", "aux", "grl", "grl_annealed")


def unseen_scores(run_dir: Path, files: dict, genre: str) -> dict:
    """STS-B of a run's best checkpoint on the test rows of ``genre`` only (cached in the run directory)."""
    from mtlkit.nlp.run import evaluate_nlp_run

    data = {"train": files["train"], "test": files["test"], "format": "sts", "options": {"domains": [genre]}, "split": {"validation": 0.1}}
    scores = cached_json(run_dir / f"unseen_{genre}.json", lambda: evaluate_nlp_run(run_dir, {"stsb": {"data": data}})["test"]["stsb"])
    return {"unseen_pearson": scores["pearson"], "unseen_spearman": scores["spearman"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/nlp"))
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--pooling", default="mean", choices=["cls", "mean"], help="mean: how MiniLM was trained")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arms", nargs="+", default=list(ARMS[:3]), choices=ARMS)
    parser.add_argument("--rows", type=int, default=1500, help="STS-B training rows (seeded subsample)")
    parser.add_argument("--grl-lambda", type=float, default=0.1)
    parser.add_argument("--annealed-lambda", type=float, default=1.0, help="λ_max of the grl_annealed arm")
    parser.add_argument("--genre-weight", type=float, default=0.5, help="loss weight of the genre task")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="train.precision (auto: bf16 where the CPU/GPU runs it natively, else fp32)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--unseen", default=None, help="a genre STS-B never trains on, scored separately (e.g. main-forums)")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmark-results/nlp_domain[_unseen-<genre>]")
    args = parser.parse_args()
    args.out = args.out or Path("benchmark-results/nlp_domain" + (f"_unseen-{args.unseen}" if args.unseen else ""))
    args.out.mkdir(parents=True, exist_ok=True)
    sts = args.data.resolve() / "stsb"
    files = {"train": str(sts / "sts-train.tsv"), "validation": str(sts / "sts-dev.tsv"), "test": str(sts / "sts-test.tsv"), "format": "sts"}
    all_genres = sorted({x.domain for x in read_sts(files["train"])})
    if args.unseen is not None and args.unseen not in all_genres:
        parser.error(f"--unseen: {args.unseen!r} is not a genre of the training file ({', '.join(all_genres)})")
    seen = [g for g in all_genres if g != args.unseen]
    stsb = {"name": "stsb", "kind": "regression", "max_length": 96,
            "data": {**files, "max_rows": {"train": args.rows, "validation": 500},
                     **({"options": {"domains": seen}} if args.unseen else {})}}
    genre = {"name": "genre", "kind": "domain", "max_length": 96, "loss_weight": args.genre_weight, "grl_lambda": args.grl_lambda,
             "data": {**files, "max_rows": {"train": args.rows, "validation": 500}}}
    steps = args.epochs * -(-args.rows // args.batch_size)

    def config(seed: int, arm: str) -> dict:
        if arm == "stsb":
            tasks = [stsb]
        elif arm == "grl_annealed":
            tasks = [stsb, {**genre, "grl_lambda": args.annealed_lambda, "grl_schedule": "ganin"}]
        else:
            tasks = [stsb, {**genre, "adversarial": arm == "grl"}]
        # `round`: every step takes one batch of each task, so the reversed gradient meets every STS-B step
        return {"seed": seed, "encoder": {"name": args.encoder, "pooling": args.pooling}, "balancer": {"name": "fixed"},
                "sampling": {"strategy": "round"},
                "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "warmup_steps": steps // 10,
                          "monitor": "stsb/pearson", "patience": None, "threads": args.threads, "precision": args.precision},
                "tasks": tasks}

    records = []
    for seed in args.seeds:
        for arm in args.arms:
            s = run_config(config(seed, arm), args.out / f"seed{seed}" / arm, Path.cwd())
            record = {"seed": seed, "arm": arm, "pearson": s["test"]["stsb"]["pearson"], "spearman": s["test"]["stsb"]["spearman"],
                      "genre_accuracy": s["test"].get("genre", {}).get("accuracy"), "wall_seconds": s.get("wall_seconds")}
            if args.unseen:
                record.update(unseen_scores(args.out / f"seed{seed}" / arm, files, args.unseen))
            records.append(record)
        write_csv(args.out / "nlp_domain.csv", records)
    genres = collections.Counter(x.domain for x in read_sts(files["test"]))
    majority = max(genres.values()) / sum(genres.values())
    rows = []
    for arm in args.arms:
        mine = [r for r in records if r["arm"] == arm]
        pick = lambda key, mine=mine: [r[key] for r in mine if r.get(key) is not None]  # noqa: E731
        unseen = [mean_std(pick("unseen_pearson")), mean_std(pick("unseen_spearman"))] if args.unseen else []
        rows.append([arm, len(mine), mean_std(pick("pearson")), mean_std(pick("spearman")), *unseen, mean_std(pick("genre_accuracy")),
                     f"{statistics.mean(pick('wall_seconds')):.0f}" if pick("wall_seconds") else "—"])
    header = ["arm", "seeds", "STS-B test Pearson" + (" (seen genres)" if args.unseen else ""), "Spearman",
              *([f"Pearson on unseen {args.unseen}", "Spearman (unseen)"] if args.unseen else []), "genre accuracy", "s / run"]
    table = markdown_table(header, rows)
    footer = (f"pooling {args.pooling}; train rows {args.rows}; epochs {args.epochs}; GRL λ {args.grl_lambda} "
              f"(annealed arm: λ_max {args.annealed_lambda}); genre loss weight {args.genre_weight}; "
              f"majority-genre rate on test {majority:.4f} ({dict(genres)})")
    report(args.out / "nlp_domain.md", table, footer)


if __name__ == "__main__":
    main()

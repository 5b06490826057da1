"""Auxiliary tasks for a shared NLP encoder: replaced-token detection, ERNIE-style stages, POS → NER.

Three experiments (``--experiment``), each over several seeds on MiniLM, selection on validation only:

* ``rtd`` — ELECTRA's discriminator (Clark et al., ICLR 2020, Eq. 2: per token, was it replaced?)
  as an auxiliary of SST-2 and of RTE. Arms per target task: the task alone, and the task + a
  ``replaced_token`` task over the same training texts (15 % of the word pieces replaced by
  uniformly sampled ones). ``round`` sampling: every step takes one batch of each task. Best epoch
  on the target's validation accuracy; the target's test accuracy is reported.
* ``stages`` — ERNIE 2.0's continual multi-task learning (Sun et al., AAAI 2020, § 3.2):
  stage 1 trains SST-2 + MRPC, stage 2 introduces RTE + STS-B. ``continual``: the stage-1 tasks keep
  ``--replay`` of stage 2's steps; ``sequential``: replay 0, i.e. sequential fine-tuning. Forgetting
  is the drop of the stage-1 tasks' validation metric from the end of stage 1 to the end of training
  (read from the run's ``metrics.csv``: a measurement, not a selection). The test metrics are those of
  the best epoch by the summed validation loss of all four tasks.
* ``pos`` — part-of-speech tagging as an auxiliary for entity recognition on WNUT-17 (tweets). The
  POS labels are **silver**: ``../shared`` has no POS-tagged corpus, so the training sentences are
  tagged by a lexicon tagger (``tools/silver_pos``, wink-pos-tagger, Penn tags) first:

      cd tools/silver_pos && npm install && node tag_conll.js ../../../shared/data/nlp/wnut17/wnut17train.conll /tmp/wnut17train.pos.conll
      python benchmarks/nlp_aux.py --experiment pos --pos-file /tmp/wnut17train.pos.conll

  Arms: ``ner`` alone, ``ner + pos`` (a ``tagging`` task with ``scheme: labels`` over the silver
  file's POS column, the same training sentences). Best epoch on validation entity F1
  (emerging.dev); test on emerging.test.

    python benchmarks/nlp_aux.py --experiment rtd --seeds 0 1 2    # writes nlp_aux_rtd.csv / .md to --out
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_model  # noqa: E402
from nlp_glue import task_defs  # noqa: E402

from nlp_common import markdown_table, mean_std, report, run_config, write_csv  # noqa: E402

EXPERIMENTS = ("rtd", "stages", "pos")
STAGE_METRIC = {"sst2": "accuracy", "mrpc": "f1", "rte": "accuracy", "stsb": "pearson"}


def validation_at_epoch(metrics_csv: Path, epoch: int) -> dict[str, float]:
    """The validation columns of a run's ``metrics.csv`` at 1-based ``epoch`` (``"sst2/accuracy"`` → value)."""
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            if int(row["epoch"]) == epoch:
                return {k[len("val/") :]: float(v) for k, v in row.items() if k.startswith("val/") and v not in ("", None)}
    raise ValueError(f"{metrics_csv}: no epoch {epoch}")


Train = Callable[[list[dict], int, str, dict, Path], dict]  # (tasks, epochs, monitor, sampling, run_dir) → summary


def rtd_records(seed: int, args: argparse.Namespace, defs: dict[str, dict], train: Train) -> list[dict]:
    """Each target alone and with a replaced-token task over its own training texts."""
    records = []
    for target in ("sst2", "rte"):
        rtd = {"name": "rtd", "kind": "replaced_token", "probability": 0.15, "loss_weight": args.rtd_weight,
               "max_length": defs[target]["max_length"], "data": {"from_tasks": [target]}}
        for arm, tasks in ((target, [defs[target]]), (f"{target} + rtd", [defs[target], rtd])):
            s = train(tasks, args.epochs, f"{target}/accuracy", {"strategy": "round"}, args.out / f"seed{seed}" / arm.replace(" + ", "_"))
            records.append({"seed": seed, "target": target, "arm": arm, "test accuracy": s["test"][target]["accuracy"],
                            "validation accuracy": s["validation"][target]["accuracy"], "best epoch": s["best_epoch"].get("model"),
                            "wall_seconds": s.get("wall_seconds")})
    return records


def stages_records(seed: int, args: argparse.Namespace, defs: dict[str, dict], train: Train) -> list[dict]:
    """SST-2 + MRPC, then RTE + STS-B: replay 0 (sequential) against ``--replay`` (continual)."""
    first, second = ["sst2", "mrpc"], ["rte", "stsb"]
    e1, e2 = args.stage_epochs
    records = []
    for arm, replay in (("sequential", 0.0), ("continual", args.replay)):
        sampling = {"strategy": "stages", "stages": [{"tasks": first, "epochs": e1}, {"tasks": second, "epochs": e2, "replay": replay}]}
        run_dir = args.out / f"seed{seed}" / arm
        s = train([defs[t] for t in first + second], e1 + e2, "loss", sampling, run_dir)
        after_first, at_end = validation_at_epoch(run_dir / "metrics.csv", e1), validation_at_epoch(run_dir / "metrics.csv", e1 + e2)
        record = {"seed": seed, "arm": arm, "best epoch": s["best_epoch"].get("model"), "wall_seconds": s.get("wall_seconds")}
        for t in first:
            m = f"{t}/{STAGE_METRIC[t]}"
            record.update({f"{m} val after stage 1": after_first[m], f"{m} val at end": at_end[m], f"{m} forgetting": after_first[m] - at_end[m]})
        record.update({f"{t}/{STAGE_METRIC[t]} test": s["test"][t][STAGE_METRIC[t]] for t in first + second})
        records.append(record)
    return records


def pos_records(seed: int, args: argparse.Namespace, data: Path, train: Train) -> list[dict]:
    """WNUT-17 NER alone and with silver POS tagging (``scheme: labels``) on the same training sentences."""
    wnut = data / "wnut17"
    ner = {"name": "ner", "kind": "tagging", "max_length": 96,
           "data": {"train": str(wnut / "wnut17train.conll"), "validation": str(wnut / "emerging.dev.conll"),
                    "test": str(wnut / "emerging.test.annotated"), "format": "conll", "max_rows": {"train": args.ner_rows}}}
    # the whole file's tag set: a subsample need not show every rare tag its validation split holds
    tagset = sorted({line.split("\t")[1] for line in args.pos_file.read_text(encoding="utf-8").splitlines() if line.strip()})
    pos = {"name": "pos", "kind": "tagging", "scheme": "labels", "labels": tagset, "max_length": 96, "loss_weight": args.pos_weight,
           "data": {"train": str(args.pos_file.resolve()), "format": "conll", "options": {"tag_column": 1},
                    "split": {"validation": 0.1, "seed": 0}, "max_rows": {"train": args.ner_rows}}}
    records = []
    for arm, tasks in (("ner", [ner]), ("ner + pos", [ner, pos])):
        s = train(tasks, args.epochs, "ner/entity_f1", {"strategy": "round"}, args.out / f"seed{seed}" / arm.replace(" + ", "_"))
        records.append({"seed": seed, "arm": arm, "test entity F1": s["test"]["ner"]["entity_f1"],
                        "validation entity F1": s["validation"]["ner"]["entity_f1"],
                        "POS validation token accuracy (silver)": s["validation"].get("pos", {}).get("token_accuracy"),
                        "best epoch": s["best_epoch"].get("model"), "wall_seconds": s.get("wall_seconds")})
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", required=True, choices=EXPERIMENTS)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/nlp"))
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--pooling", default="mean", choices=["cls", "mean"], help="mean: how MiniLM was trained")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--rows",
        type=int,
        nargs=4,
        default=[1500, 1000, 600, 800],
        metavar=("SST2", "RTE", "MRPC", "STSB"),
        help="training rows per GLUE task (seeded subsamples)",
    )
    parser.add_argument("--eval-rows", type=int, default=500, help="validation/test rows per GLUE task (seeded subsample)")
    parser.add_argument("--rtd-weight", type=float, default=1.0, help="loss weight of the replaced-token task")
    parser.add_argument("--stage-epochs", type=int, nargs=2, default=[2, 2], metavar=("STAGE1", "STAGE2"))
    parser.add_argument("--replay", type=float, default=0.3, help="stage-1 tasks' share of stage 2's steps (continual arm)")
    parser.add_argument("--pos-file", type=Path, default=None, help="WNUT-17 training file with a silver POS column (tools/silver_pos)")
    parser.add_argument("--ner-rows", type=int, default=1000, help="WNUT-17 training sentences (seeded subsample of 3,394)")
    parser.add_argument("--pos-weight", type=float, default=0.5, help="loss weight of the POS task")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the rtd and pos experiments")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--head-lr", type=float, default=5e-4)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="default: benchmark-results/nlp_aux_<experiment>")
    args = parser.parse_args()
    if args.experiment == "pos" and (args.pos_file is None or not args.pos_file.is_file()):
        parser.error("--experiment pos needs --pos-file: the silver POS file written by tools/silver_pos/tag_conll.js")
    args.out = args.out or Path(f"benchmark-results/nlp_aux_{args.experiment}")
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data.resolve()
    defs = task_defs(data, dict(zip(("sst2", "rte", "mrpc", "stsb"), args.rows)), args.eval_rows)
    print(f"CPU: {cpu_model()}; experiment {args.experiment}; seeds {args.seeds}", flush=True)

    def train(seed: int) -> Train:
        def run(tasks: list[dict], epochs: int, monitor: str, sampling: dict, run_dir: Path) -> dict:
            config = {"seed": seed, "encoder": {"name": args.encoder, "pooling": args.pooling}, "balancer": {"name": "fixed"},
                      "sampling": sampling,
                      "train": {"epochs": epochs, "batch_size": args.batch_size, "lr": args.lr, "head_lr": args.head_lr, "warmup_steps": 30,
                                "monitor": monitor, "patience": None, "threads": args.threads, "precision": args.precision},
                      "tasks": tasks}
            return run_config(config, run_dir, Path.cwd())

        return run

    records: list[dict] = []
    for seed in args.seeds:
        if args.experiment == "rtd":
            records += rtd_records(seed, args, defs, train(seed))
        elif args.experiment == "stages":
            records += stages_records(seed, args, defs, train(seed))
        else:
            records += pos_records(seed, args, data, train(seed))
        write_csv(args.out / f"nlp_aux_{args.experiment}.csv", records, list(dict.fromkeys(k for r in records for k in r)))

    arms = list(dict.fromkeys(r["arm"] for r in records))
    metrics = [k for k in records[0] if k not in ("seed", "target", "arm", "best epoch", "wall_seconds") and any(isinstance(r.get(k), float) for r in records)]
    rows = []
    for arm in arms:
        mine = [r for r in records if r["arm"] == arm]
        rows.append(
            [
                arm,
                len(mine),
                *[mean_std([r[k] for r in mine if isinstance(r.get(k), float)]) for k in metrics],
                f"{sum(r['wall_seconds'] or 0 for r in mine) / len(mine):.0f}",
            ]
        )
    table = markdown_table(["arm", "seeds", *metrics, "s / run"], rows)
    footer = (
        f"{args.encoder} ({args.pooling} pooling); lr {args.lr} (heads {args.head_lr}); batch {args.batch_size}; "
        + {
            "rtd": f"training rows SST-2 {args.rows[0]}, RTE {args.rows[1]}; {args.epochs} epochs; RTD weight {args.rtd_weight}",
            "stages": f"rows {args.rows}; stage epochs {args.stage_epochs}; replay {args.replay}",
            "pos": f"{args.ner_rows} WNUT-17 training sentences; {args.epochs} epochs; POS weight {args.pos_weight} (silver tags)",
        }[args.experiment]
        + (f"; validation/test rows {args.eval_rows} per GLUE task" if args.experiment != "pos" else "")
        + f"; CPU {cpu_model()}"
    )
    report(args.out / f"nlp_aux_{args.experiment}.md", table, footer)


if __name__ == "__main__":
    main()

"""Same-text information extraction on SciERC: entity and relation models sharing one encoder or
each with its own (Zhong & Chen, "A Frustratingly Easy Approach for Entity and Relation
Extraction", NAACL 2021 — PURE argues for separate encoders).

Tasks, trained jointly in one run (MT-DNN proportional sampling), MiniLM encoder(s):

* ``ner``: span-based entity model (``span_ner``: every span of up to 8 words, typed or ``none``),
  on a seeded subsample of the training sentences;
* ``rel``: PURE's relation model (``relation``: typed punctuation markers around each ordered pair of
  gold entities) on a seeded subsample of the training sentences (each sentence gives n(n−1) pairs).

Arms: ``shared`` (both tasks read one encoder) and ``own`` (``encoder: own`` on both: two copies
of the encoder, same start, separate parameters; the same compute per step, twice the parameters).
Best epoch on the summed validation loss. Reported on test.json (551 sentences): entity F1,
relation F1 given gold entities (Rel, boundaries + type), and end to end (Rel and Rel+ with the
entity model's predictions as the only candidates: :func:`mtlkit.nlp.pipeline.end_to_end_relations`).

    python benchmarks/nlp_ie.py --seeds 0       # writes nlp_ie.csv / nlp_ie.md to --out
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from nlp_common import cached_json, markdown_table, mean_std, report, run_config, write_csv  # noqa: E402

ARMS = ("shared", "own")


def end_to_end(run_dir: Path) -> dict[str, float]:
    from mtlkit.nlp.pipeline import end_to_end_relations
    from mtlkit.nlp.run import load_nlp_run

    prepared, model = load_nlp_run(run_dir)
    tasks = {t.name: t for t in prepared.tasks}
    return end_to_end_relations(model, tasks["ner"], tasks["rel"], prepared.examples["rel"]["test"], prepared.tokenizer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/nlp"))
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--ner-rows", type=int, default=1000, help="training sentences of the entity task")
    parser.add_argument("--rel-rows", type=int, default=400, help="training sentences of the relation task")
    parser.add_argument("--validation-rows", type=int, default=150, help="validation sentences per task")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5, help="the encoder's learning rate")
    parser.add_argument("--head-lr", type=float, default=5e-4, help="the task heads' learning rate (PURE: 5e-4)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="train.precision (auto: bf16 where the CPU/GPU runs it natively, else fp32)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmark-results/nlp_ie"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    root = args.data.resolve() / "scierc"
    from mtlkit.nlp.readers.scierc import entity_types, read_scierc, relation_types

    everything = read_scierc(root / "train.json")  # the label sets of the whole file, not of a subsample
    files = {"train": str(root / "train.json"), "validation": str(root / "dev.json"), "test": str(root / "test.json"), "format": "scierc"}

    def config(seed: int, arm: str) -> dict:
        ner = {"name": "ner", "kind": "span_ner", "max_length": 128, "encoder": arm,
               "labels": entity_types(everything),
               "data": {**files, "max_rows": {"train": args.ner_rows, "validation": args.validation_rows}}}
        rel = {"name": "rel", "kind": "relation", "max_length": 128, "encoder": arm,
               "labels": relation_types(everything),
               "data": {**files, "max_rows": {"train": args.rel_rows, "validation": args.validation_rows}}}
        return {"seed": seed, "encoder": {"name": args.encoder, "pooling": "cls"}, "balancer": {"name": "fixed"},
                "sampling": {"strategy": "proportional"},
                "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "head_lr": args.head_lr, "warmup_steps": 30,
                          "monitor": "loss", "patience": None, "threads": args.threads, "precision": args.precision},
                "tasks": [ner, rel]}

    records = []
    for seed in args.seeds:
        for arm in args.arms:
            run_dir = args.out / f"seed{seed}" / arm
            s = run_config(config(seed, arm), run_dir, Path.cwd())
            e2e = cached_json(run_dir / "end_to_end.json", lambda run_dir=run_dir: end_to_end(run_dir))
            records.append({"seed": seed, "arm": arm, "parameters": s["parameters"], "entity_f1": s["test"]["ner"]["entity_f1"],
                            "relation_f1_gold_entities": s["test"]["rel"]["relation_f1"],
                            "relation_f1_end_to_end": e2e["relation_f1"], "relation_strict_f1_end_to_end": e2e["relation_strict_f1"],
                            "wall_seconds": s.get("wall_seconds")})
            print(f"  {arm} seed {seed}: {records[-1]}", flush=True)
        write_csv(args.out / "nlp_ie.csv", records)
    rows = []
    for arm in args.arms:
        mine = [r for r in records if r["arm"] == arm]
        rows.append([arm, len(mine), f"{mine[0]['parameters'] / 1e6:.1f} M",
                     *[mean_std([r[k] for r in mine]) for k in ("entity_f1", "relation_f1_gold_entities",
                                                                 "relation_f1_end_to_end", "relation_strict_f1_end_to_end")]])
    table = markdown_table(["encoders", "seeds", "parameters", "entity F1", "Rel F1 (gold entities)", "Rel F1 (end to end)",
                            "Rel+ F1 (end to end)"], rows)
    footer = (f"train sentences: ner {args.ner_rows}, rel {args.rel_rows} (seeded subsamples of 1,861); validation {args.validation_rows} "
              f"sentences; test 551 sentences; epochs {args.epochs}; lr {args.lr} (heads {args.head_lr})")
    report(args.out / "nlp_ie.md", table, footer)


if __name__ == "__main__":
    main()

"""Extractive QA on XQuAD-en with and without the auxiliary "this window contains the answer"
classifier (the paragraph-selection auxiliary of multi-paragraph QA: Clark & Gardner 2018,
Min et al. 2018), MiniLM encoder.

Split: our own, by paragraph (all questions of a context in one split; seeded, fixed across
seeds): 70 % train, 15 % validation, 15 % test of the 240 paragraphs / 1,190 questions.
Contexts are cut into windows of --max-length word pieces overlapping by --stride, so most
questions have windows without the answer: that is where the auxiliary task has something to
learn and where filtering matters. (With 384-piece windows nearly every XQuAD context fits in one
window and the classifier would always say "yes".)

Arms:

* ``span``: start/end prediction alone;
* ``aux``: start/end + the contains-answer classifier, trained jointly (loss span + 0.5·BCE);
  scored twice from the same checkpoint: best span over all windows (``aux``), and over the windows
  the classifier keeps (p ≥ --threshold; ``aux+filter``: the filtering at inference).

Best epoch on validation SQuAD F1. Reported on test: SQuAD EM and F1 (official normalisation).

    python benchmarks/nlp_qa.py --seeds 0 1       # writes nlp_qa.csv / nlp_qa.md to --out
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from nlp_common import cached_json, markdown_table, mean_std, report, run_config, write_csv  # noqa: E402

ARMS = ("span", "aux")


def window_diagnostics(run_dir: Path, threshold: float) -> dict:
    """On test: the classifier's window accuracy, how often the best span already lies in an
    answer-holding window, and how many answers the filter changes."""
    from mtlkit.nlp.evaluation import predict_task
    from mtlkit.nlp.run import load_nlp_run

    prepared, model = load_nlp_run(run_dir)
    task = prepared.tasks[0]
    table, examples = prepared.tables["test"][task.name], prepared.examples[task.name]["test"]
    outputs, _, _ = predict_task(model, task, table, 64)
    plain, p_answer = task._predict(outputs, table, examples)
    filtered, _ = task.model_copy(update={"answer_threshold": threshold})._predict(outputs, table, examples)
    holds = table.targets[task.name][:, 2].bool()
    _, _, score, _ = task._window_scores(outputs, table)
    best: dict[int, int] = {}
    for window, question in enumerate(table.extras["example_index"].tolist()):
        if question not in best or score[window] > score[best[question]]:
            best[question] = window
    return {"windows": len(holds), "windows_with_answer": int(holds.sum()),
            "window_accuracy": float(((p_answer >= threshold) == holds).float().mean()),
            "best_span_in_answer_window": sum(bool(holds[w]) for w in best.values()) / len(best),
            "answers_changed_by_filter": sum(plain[k] != filtered[k] for k in plain), "questions": len(plain)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/nlp"))
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--stride", type=int, default=48)
    parser.add_argument("--train-rows", type=int, default=None, help="keep a seeded subsample of the training questions")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="train.precision (auto: bf16 where the CPU/GPU runs it natively, else fp32)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmark-results/nlp_qa"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    source = str(args.data.resolve() / "xquad_en" / "xquad.en.json")

    def config(seed: int, arm: str) -> dict:
        qa = {"name": "qa", "kind": "span_qa", "max_length": args.max_length, "doc_stride": args.stride,
              "answer_classifier": arm == "aux",
              "data": {"train": source, "format": "squad", "split": {"validation": 0.15, "test": 0.15, "seed": 0, "group": "paragraph"},
                       **({"max_rows": {"train": args.train_rows}} if args.train_rows else {})}}
        return {"seed": seed, "encoder": {"name": args.encoder, "pooling": "cls"}, "balancer": {"name": "fixed"},
                "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "warmup_steps": 20,
                          "monitor": "qa/squad_f1", "patience": None, "threads": args.threads, "precision": args.precision},
                "tasks": [qa]}

    records, diagnostics = [], {}
    for seed in args.seeds:
        for arm in args.arms:
            run_dir = args.out / f"seed{seed}" / arm
            s = run_config(config(seed, arm), run_dir, Path.cwd())
            records.append({"seed": seed, "arm": arm, "em": s["test"]["qa"]["squad_em"], "f1": s["test"]["qa"]["squad_f1"],
                            "questions": s["rows"]["qa"]["test"], "wall_seconds": s.get("wall_seconds")})
            if arm == "aux":
                from mtlkit.nlp.run import evaluate_nlp_run

                filtered = cached_json(run_dir / f"test_filtered_{args.threshold}.json",
                                       lambda run_dir=run_dir: evaluate_nlp_run(run_dir, {"qa": {"answer_threshold": args.threshold}}))["test"]["qa"]
                diagnostics[seed] = cached_json(run_dir / f"windows_{args.threshold}.json", lambda run_dir=run_dir: window_diagnostics(run_dir, args.threshold))
                records.append({"seed": seed, "arm": "aux+filter", "em": filtered["squad_em"], "f1": filtered["squad_f1"],
                                "questions": s["rows"]["qa"]["test"], "wall_seconds": None,
                                "answer_window_accuracy": diagnostics[seed]["window_accuracy"]})
            print(f"  {arm} seed {seed}: {records[-1]}", flush=True)
        write_csv(args.out / "nlp_qa.csv", records, ["seed", "arm", "em", "f1", "questions", "wall_seconds", "answer_window_accuracy"])
    rows = []
    for arm in [a for a in ("span", "aux", "aux+filter") if any(r["arm"] == a for r in records)]:
        mine = [r for r in records if r["arm"] == arm]
        rows.append([arm, len(mine), mean_std([r["em"] for r in mine]), mean_std([r["f1"] for r in mine])])
    table = markdown_table(["arm", "seeds", "test EM", "test F1"], rows)
    footer = (f"windows of {args.max_length} pieces, stride {args.stride}; threshold {args.threshold}; epochs {args.epochs}; "
              f"lr {args.lr}; split by paragraph 70/15/15 (seed 0)")
    for seed, d in diagnostics.items():
        footer += (f"\nseed {seed} (aux, test): window accuracy {d['window_accuracy']:.3f} ({d['windows_with_answer']} of {d['windows']} "
                   f"windows hold the answer); best span already in an answer window for {d['best_span_in_answer_window']:.1%} of "
                   f"questions; the filter changes {d['answers_changed_by_filter']} of {d['questions']} answers")
    report(args.out / "nlp_qa.md", table, footer)


if __name__ == "__main__":
    main()

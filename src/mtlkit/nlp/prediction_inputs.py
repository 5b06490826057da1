"""One task's prediction as an input of another, behind a stop-gradient.

Hashimoto et al. ("A Joint Many-Task Model", EMNLP 2017, §2.2) feed a lower task's predicted
label distribution, as a probability-weighted label embedding, to the layers of a higher task.
Here a sequence-level task lists ``prediction_inputs: [source, …]``; on each of its batches the
sources' heads run on the *same* texts and their predictions — class probabilities for a
classification or domain task, the value for a regression task — are concatenated to the
consumer's pooled vector before its head:

    h_B = [pooled(x); stopgrad(p_A(x))],   ŷ_B = head_B(h_B)

The stop-gradient (the sources run under ``torch.no_grad``) keeps the consumer's loss from
training the source: the source learns only from its own data, as the issue of feeding one
task's prediction to another asks. Consumers must be kinds whose head reads only the pooled
vector (``pooled_head = True``: classification, regression, domain); sources must say what their
prediction is (``prediction_features`` / ``prediction_width``). Chains (A → B → C) are allowed, cycles are not.

Example:
    >>> from mtlkit.nlp.kinds.classification import ClassificationTask
    >>> from mtlkit.nlp.kinds.regression import RegressionTask
    >>> nli = ClassificationTask(name="nli", labels=["entail", "neutral", "contradict"])
    >>> sts = RegressionTask(name="sts", prediction_inputs=["nli"])
    >>> check_prediction_inputs([nli, sts]), extra_width(sts, {"nli": nli, "sts": sts})
    (['nli', 'sts'], 3)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mtlkit.nlp.base import NLPTask


def check_prediction_inputs(tasks: Sequence[NLPTask]) -> list[str]:
    """Task names in an order where every source comes before its consumers; ValueError if invalid."""
    by_name = {t.name: t for t in tasks}
    for task in tasks:
        if not task.prediction_inputs:
            continue
        if not task.pooled_head:
            raise ValueError(f"task {task.name!r}: prediction_inputs needs a kind whose head reads the pooled vector "
                             f"(classification, regression, domain), not {task.kind!r}")
        for source in task.prediction_inputs:
            if source == task.name:
                raise ValueError(f"task {task.name!r}: prediction_inputs names the task itself")
            if source not in by_name:
                raise ValueError(f"task {task.name!r}: prediction_inputs names {source!r}, which is not a task of this run")
            if type(by_name[source]).prediction_features is NLPTask.prediction_features:
                raise ValueError(f"task {task.name!r}: task {source!r} ({by_name[source].kind}) has no per-text prediction "
                                 "to feed (use a classification, regression or domain task)")
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            raise ValueError(f"prediction_inputs form a cycle: {' → '.join((*path, name))}")
        state[name] = "open"
        for source in by_name[name].prediction_inputs:
            visit(source, (*path, name))
        state[name] = "done"
        order.append(name)

    for task in tasks:
        visit(task.name, ())
    return order


def extra_width(task: NLPTask, tasks: Mapping[str, NLPTask]) -> int:
    """How many features the sources add to ``task``'s pooled vector."""
    return sum(tasks[source].prediction_width or 0 for source in task.prediction_inputs)


__all__ = ["check_prediction_inputs", "extra_width"]

"""A loaded study: the base config, each arm's resolved config, checked before anything runs.

An arm's config is the base with its ``patch`` deep-merged in (mappings merge key by key, any
other value replaces) and, when it names ``tasks``, the task list cut to those tasks. The
equal-capacity single-task arm (:func:`single_task_arm`) is added when the user leaves it out:
the ``single_task`` backbone gives each task its own network with the width of one shared-bottom
path (the base's ``hidden``, or its experts' ``expert_hidden`` for expert backbones), the same
embeddings, towers and training settings, and no balancer.

Every check runs here, before a directory is written: every arm and every search-space key is
validated as a run config, every metric must be reported by its task, and two arms that differ
in nothing are an error.

Example:
    >>> merged = deep_merge({"model": {"backbone": "mmoe", "options": {"experts": 4}}}, {"model": {"options": {"experts": 8}}})
    >>> merged["model"]
    {'backbone': 'mmoe', 'options': {'experts': 8}}
    >>> raw = {}
    >>> set_path(raw, "train.lr", 0.01); raw
    {'train': {'lr': 0.01}}
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mtlkit.errors import ConfigError, validation_error
from mtlkit.study.spec import SINGLE_TASK, ArmSpec, MetricSpec, Param, StudySpec


def deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_path(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``raw[a][b][c] = value`` for ``dotted = "a.b.c"``, creating mappings on the way."""
    *parents, last = dotted.split(".")
    node = raw
    for part in parents:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {part!r} is not a mapping")
        node = child
    node[last] = value


@dataclass(frozen=True)
class Arm:
    name: str
    raw: dict[str, Any]  # the resolved run config as a mapping (patch and task subset applied)
    search: dict[str, Param]
    tasks: list[str]  # trained tasks
    judged: list[str]  # trained tasks with a study metric
    versus: tuple[str, ...] = ()  # arms compared with besides single-task

    def config(self, source: str, params: dict[str, Any] | None = None, seed: int | None = None, epochs: int | None = None) -> Any:
        """The arm's run config with a trial's ``params``, a seed and an epoch budget."""
        raw = copy.deepcopy(self.raw)
        for key, value in (params or {}).items():
            set_path(raw, key, value)
        if seed is not None:
            raw["seed"] = seed
        if epochs is not None:
            set_path(raw, "train.epochs", epochs)
        set_path(raw, "train.progress", False)
        return validate_config(raw, source)

    def fingerprint(self) -> str:
        """What a finished trial depends on: a changed config or space invalidates the arm's trials."""
        body = json.dumps({"raw": self.raw, "search": {k: v.model_dump() for k, v in sorted(self.search.items())}}, sort_keys=True, default=str)
        return hashlib.sha256(body.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Study:
    spec: StudySpec
    source: str
    base: dict[str, Any]
    arms: list[Arm]
    task_names: list[str]  # every task of the base config

    @property
    def metrics(self) -> dict[str, MetricSpec]:
        return dict(self.spec.metrics)

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    @property
    def is_nlp(self) -> bool:
        return "encoder" in self.base


def validate_config(raw: dict[str, Any], source: str) -> Any:
    """A tabular RunConfig, or an NLP run config when ``raw`` has ``encoder:``; ConfigError otherwise."""
    if "encoder" in raw:
        from mtlkit.nlp.config import parse_nlp_config

        return parse_nlp_config(raw, source)
    from mtlkit.config import _validate

    return _validate(raw, source)


def _task_names(config: Any) -> list[str]:
    if type(config).__name__ == "NLPRunConfig":
        return [t.name for t in config.task_list()]
    if config.tasks:
        return [t.name for t in config.tasks]
    from mtlkit.run import prepare_data  # a built-in dataset brings its tasks

    return [t.name for t in prepare_data(config).tasks]


def _task_metrics(config: Any, name: str) -> list[str]:
    if type(config).__name__ == "NLPRunConfig":
        task = next(t for t in config.task_list() if t.name == name)
    else:
        tasks = config.tasks
        if not tasks:
            from mtlkit.run import prepare_data

            tasks = prepare_data(config).tasks
        task = next(t for t in tasks if t.name == name)
    return ["loss", *(task.metrics or [])]


def _with_tasks(raw: dict[str, Any], config: Any, names: list[str], where: str) -> dict[str, Any]:
    """``raw`` with its task list cut to ``names`` (a built-in dataset's tasks are written out first)."""
    out = copy.deepcopy(raw)
    if "encoder" in raw:
        out["tasks"] = [t for t in raw["tasks"] if isinstance(t, dict) and t.get("name") in names]
        return out
    if not raw.get("tasks"):
        from mtlkit.run import prepare_data

        out["tasks"] = [t.model_dump(mode="json", exclude_none=True) for t in prepare_data(config).tasks]
        if not raw.get("features"):
            out["features"] = prepare_data(config).features.model_dump(mode="json", exclude_none=True)
    out["tasks"] = [t for t in out["tasks"] if t.get("name") in names]
    return out


def single_task_arm(base: dict[str, Any]) -> ArmSpec:
    """The equal-capacity single-task arm: one network per task, the width of one shared-bottom path.

    For an NLP base, every task gets its own copy of the encoder (``encoder: own``): the same
    architecture per task, nothing shared. (The arm's task list is rewritten in :func:`resolve_study`.)
    """
    if "encoder" in base:
        return ArmSpec(name=SINGLE_TASK, patch={"balancer": {"name": "fixed"}})
    model = base.get("model") or {}
    options = model.get("options") or {}
    hidden = options.get("hidden") or options.get("expert_hidden") or [128]
    patch: dict[str, Any] = {"model": {"backbone": SINGLE_TASK, "options": {"hidden": hidden}}, "balancer": {"name": "fixed"}}
    return ArmSpec(name=SINGLE_TASK, patch=patch)


def _replace_model(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    # A backbone change replaces the options (an MMoE's `experts` mean nothing to a single-task network).
    merged = deep_merge(base, patch)
    model_patch = patch.get("model")
    if isinstance(model_patch, dict) and "backbone" in model_patch and model_patch.get("backbone") != (base.get("model") or {}).get("backbone"):
        merged["model"]["options"] = copy.deepcopy(model_patch.get("options") or {})
    return merged


def load_study(path: str | Path) -> Study:
    """Read and check a study file; every problem is one ConfigError line naming the file and key."""
    from mtlkit.config import read_config_file

    path = Path(path)
    source = str(path)
    raw = read_config_file(path)
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as error:
        raise validation_error(error, source) from None
    return resolve_study(spec, source, path.parent)


def _base_raw(spec: StudySpec, source: str, folder: Path) -> dict[str, Any]:
    from mtlkit.config import read_config_file

    if isinstance(spec.base, dict):
        return copy.deepcopy(spec.base)
    base_path = Path(spec.base) if Path(spec.base).is_absolute() else folder / spec.base
    if not base_path.exists():
        raise ConfigError(f"{source}: key 'base': {base_path}: no such file")
    return read_config_file(base_path)


def _absolute_paths(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Data paths relative to the study file (or base file) become absolute, as run configs store them."""
    out = copy.deepcopy(raw)
    data = out.get("data")
    if isinstance(data, dict):
        for key in ("train", "validation", "test"):
            if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
                data[key] = str((folder / data[key]).resolve())
        options = data.get("dataset_options")
        if isinstance(options, dict) and isinstance(options.get("root"), str) and not Path(options["root"]).is_absolute():
            options["root"] = str((folder / options["root"]).resolve())
    for task in out.get("tasks") or []:
        task_data = task.get("data") if isinstance(task, dict) else None
        if isinstance(task_data, dict):
            for key in ("train", "validation", "test"):
                if isinstance(task_data.get(key), str) and not Path(task_data[key]).is_absolute():
                    task_data[key] = str((folder / task_data[key]).resolve())
    return out


def resolve_study(spec: StudySpec, source: str, folder: Path) -> Study:
    base_folder = folder if isinstance(spec.base, dict) else (folder / spec.base).parent
    base = _absolute_paths(_base_raw(spec, source, folder), base_folder)
    base_config = validate_config(base, f"{source}: base")
    all_tasks = _task_names(base_config)
    for task, metric in spec.metrics.items():
        if task not in all_tasks:
            raise ConfigError(f"{source}: key 'metrics.{task}': no task {task!r} in the base config ({', '.join(all_tasks)})")
        reported = _task_metrics(base_config, task)
        if metric.name not in reported:
            raise ConfigError(f"{source}: key 'metrics.{task}.name': task {task!r} does not report {metric.name!r} (it reports {', '.join(reported)})")
    arm_specs = list(spec.arms)
    if not any(a.name == SINGLE_TASK for a in arm_specs):
        arm_specs.insert(0, single_task_arm(base))
    arms = []
    for arm_spec in arm_specs:
        where = f"{source}: arm {arm_spec.name!r}"
        raw = _replace_model(base, _absolute_paths(arm_spec.patch, folder))
        if arm_spec.name == SINGLE_TASK and "encoder" in base and not arm_spec.patch.get("tasks"):
            raw["tasks"] = [{**t, "encoder": "own"} if isinstance(t, dict) else t for t in raw.get("tasks") or []]
        tasks = list(all_tasks)
        if arm_spec.tasks is not None:
            unknown = [t for t in arm_spec.tasks if t not in all_tasks]
            if unknown:
                raise ConfigError(f"{where}: key 'tasks': no task {unknown[0]!r} in the base config ({', '.join(all_tasks)})")
            raw = _with_tasks(raw, base_config, arm_spec.tasks, where)
            tasks = [t for t in all_tasks if t in arm_spec.tasks]
        judged = [t for t in tasks if t in spec.metrics]
        if not judged:
            raise ConfigError(f"{where}: key 'tasks': trains none of the tasks with a metric ({', '.join(spec.metrics)})")
        search = spec.arm_search(arm_spec)
        arm = Arm(arm_spec.name, raw, search, tasks, judged, tuple(arm_spec.versus))
        arm.config(where)  # the arm itself
        for key, param in search.items():
            arm.config(f"{where}: search key {key!r}", {key: param.example()})
        arms.append(arm)
    for i, a in enumerate(arms):
        for b in arms[:i]:
            if a.fingerprint() == b.fingerprint():
                raise ConfigError(f"{source}: key 'arms': arms {b.name!r} and {a.name!r} differ in nothing (same config, tasks and search space)")
    return Study(spec, source, base, arms, all_tasks)


__all__ = ["Arm", "Study", "deep_merge", "load_study", "resolve_study", "set_path", "single_task_arm", "validate_config"]

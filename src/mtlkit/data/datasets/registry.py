"""Built-in datasets by name (``data.dataset``): a loader and the model of its options.

A dataset module registers itself with one line at its end::

    DATASETS.register("census_income")(BuiltinDataset(CensusOptions, _load))

and ``mtlkit.data.datasets`` imports the module (one more line). ``data.dataset_options`` is
validated by the dataset's :class:`DatasetOptions` model before the loader runs, so an unknown key
or a wrong type is a one-line error naming the key and the keys the dataset takes.

Example:
    >>> import mtlkit.data.datasets  # registers the built-in datasets
    >>> "census_income" in DATASETS, "shortvideo" in DATASETS
    (True, True)
    >>> load_dataset("mmoe_synthetic", {"n": 1000, "d": 4}).train.num_rows
    800
    >>> load_dataset("mmoe_synthetic", {"rows": 10})
    Traceback (most recent call last):
    ...
    mtlkit.errors.ConfigError: data.dataset_options: unknown key 'rows' for mmoe_synthetic (n, d, c, m, p, seed)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from mtlkit.errors import ConfigError, validation_error
from mtlkit.registry import Registry

KEY = "data.dataset_options"


class DatasetOptions(BaseModel):
    """The keys of ``data.dataset_options`` a dataset takes (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


@dataclass(frozen=True)
class BuiltinDataset:
    """A dataset's options model and its loader (validated options -> ``DatasetSplits``)."""

    options: type[DatasetOptions]
    load: Callable[[Any], Any]


DATASETS: Registry[BuiltinDataset] = Registry("dataset")


def load_dataset(name: str, options: Mapping[str, Any]) -> Any:
    """``DatasetSplits`` of the built-in dataset ``name`` with ``options``; ConfigError naming the key."""
    dataset = DATASETS.get(name)
    keys = ", ".join(dataset.options.model_fields)
    try:
        validated = dataset.options.model_validate(dict(options))
    except ValidationError as error:
        first = error.errors()[0]
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"{KEY}: unknown key {first['loc'][0]!r} for {name} ({keys})") from None
        raise validation_error(error, f"{KEY} for {name}") from None
    try:
        return dataset.load(validated)
    except ConfigError as error:
        raise ConfigError(f"{KEY}: {error}") from None
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{KEY} for {name}: {error}") from None


__all__ = ["DATASETS", "BuiltinDataset", "DatasetOptions", "load_dataset"]

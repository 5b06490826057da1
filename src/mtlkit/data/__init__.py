"""Tabular data: readers, schema fitting and encoding, columnar tables and batches."""

from mtlkit.data.batch import Batch, EncodedTable, TableBatches
from mtlkit.data.multi import PerTaskBatches
from mtlkit.data.readers import read_table
from mtlkit.data.schema import CategoricalFeature, FittedSchema, NumericFeature, SchemaSpec
from mtlkit.data.split import seeded_split

__all__ = [
    "Batch",
    "CategoricalFeature",
    "EncodedTable",
    "FittedSchema",
    "NumericFeature",
    "PerTaskBatches",
    "SchemaSpec",
    "TableBatches",
    "read_table",
    "seeded_split",
]

"""Where each input feature sits in the encoded vector a backbone reads, for backbones that look inside it.

:class:`~mtlkit.nn.embedding.TabularEncoder` concatenates ``[copy 0 fields | copy 1 fields | … |
numeric | pooled sequences]``: ``copies`` embeddings of each of the ``F`` categorical fields (one
copy unless a backbone asks for more, STEM's shared and task-specific tables), each ``D`` wide,
then the numeric columns, then one ``D``-wide column block per sequence feature. PEPNet slices its
prior features out of it, STEM its per-task embedding copies, STAR reads the scenario field's ids.

Example:
    >>> layout = InputLayout(["user", "item"], [10, 20], embedding_dim=4, numeric_dim=3, n_sequences=1, copies=2)
    >>> layout.input_dim, layout.field_columns("item", copy=1)
    (23, slice(12, 16, None))
    >>> layout.copy_columns(0), layout.other_columns()
    (slice(0, 8, None), slice(16, 23, None))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mtlkit.errors import ConfigError


@dataclass(frozen=True)
class InputLayout:
    categorical: Sequence[str]
    cardinalities: Sequence[int]
    embedding_dim: int
    numeric_dim: int = 0
    n_sequences: int = 0
    copies: int = 1
    scenario: str | None = field(default=None)

    @property
    def n_fields(self) -> int:
        return len(self.categorical)

    @property
    def input_dim(self) -> int:
        return (self.copies * self.n_fields + self.n_sequences) * self.embedding_dim + self.numeric_dim

    def index(self, name: str, key: str) -> int:
        """The categorical field ``name``'s position; a ConfigError naming ``key`` when there is none."""
        if name not in self.categorical:
            known = ", ".join(self.categorical) or "none"
            raise ConfigError(f"{key}: {name!r} is not a categorical feature; categorical features are: {known}")
        return list(self.categorical).index(name)

    def field_columns(self, name: str, copy: int = 0, key: str = "model.options") -> slice:
        start = (copy * self.n_fields + self.index(name, key)) * self.embedding_dim
        return slice(start, start + self.embedding_dim)

    def copy_columns(self, copy: int) -> slice:
        """All ``F·D`` embedding columns of one copy."""
        width = self.n_fields * self.embedding_dim
        return slice(copy * width, (copy + 1) * width)

    def other_columns(self) -> slice:
        """The numeric and pooled-sequence columns, shared by every copy."""
        return slice(self.copies * self.n_fields * self.embedding_dim, self.input_dim)


__all__ = ["InputLayout"]

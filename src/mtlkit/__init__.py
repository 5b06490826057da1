"""mtlkit: multi-task learning for ranking and NLP on PyTorch.

``import mtlkit`` loads only the core (torch, numpy, pyarrow, pydantic); optional parts such as
TensorBoard logging are imported when used, and nothing touches the network.
"""

from mtlkit.errors import ConfigError, DataError, MtlkitError
from mtlkit.tasks import Task, TaskKind, TaskMask

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "MtlkitError", "Task", "TaskKind", "TaskMask", "__version__"]

"""Loss balancing and gradient aggregation methods (a registry: one file + one line each)."""

from mtlkit.balancing import fixed  # noqa: F401  (register balancers)
from mtlkit.balancing import uncertainty  # noqa: F401
from mtlkit.balancing import dwa  # noqa: F401
from mtlkit.balancing import rlw  # noqa: F401
from mtlkit.balancing import gls  # noqa: F401
from mtlkit.balancing import scheduled  # noqa: F401
from mtlkit.balancing import famo  # noqa: F401
from mtlkit.balancing import db_mtl  # noqa: F401
from mtlkit.balancing import gradnorm  # noqa: F401
from mtlkit.balancing import mgda  # noqa: F401
from mtlkit.balancing import mgda_ub  # noqa: F401
from mtlkit.balancing import pcgrad  # noqa: F401  (torchjd)
from mtlkit.balancing import cagrad  # noqa: F401  (torchjd)
from mtlkit.balancing import imtl_g  # noqa: F401  (torchjd)
from mtlkit.balancing import nash_mtl  # noqa: F401  (torchjd)
from mtlkit.balancing import aligned_mtl  # noqa: F401  (torchjd)
from mtlkit.balancing import upgrad  # noqa: F401  (torchjd)
from mtlkit.balancing import dualproj  # noqa: F401  (torchjd)
from mtlkit.balancing import gradvac  # noqa: F401  (torchjd)
from mtlkit.balancing import graddrop  # noqa: F401  (torchjd)
from mtlkit.balancing.base import BALANCERS, Balancer, BalancerOptions, LossWeighting
from mtlkit.balancing.gradient import GradientBalancer, GramianBalancer
from mtlkit.balancing.spec import BalancerSpec, build_balancer

__all__ = [
    "BALANCERS",
    "Balancer",
    "BalancerOptions",
    "BalancerSpec",
    "GradientBalancer",
    "GramianBalancer",
    "LossWeighting",
    "build_balancer",
]

"""Loss balancing and gradient aggregation methods (a registry: one file + one line each)."""

from mtlkit.balancing import fixed  # noqa: F401  (register balancers)
from mtlkit.balancing.base import BALANCERS, Balancer, BalancerOptions, LossWeighting
from mtlkit.balancing.spec import BalancerSpec, build_balancer

__all__ = ["BALANCERS", "Balancer", "BalancerOptions", "BalancerSpec", "LossWeighting", "build_balancer"]

"""Loss balancing and gradient aggregation methods (a registry: one file + one line each)."""

from mtlkit.balancing import (
    aligned_mtl,
    cagrad,
    db_mtl,
    dualproj,
    dwa,
    excess_mtl,
    fairgrad,
    famo,
    fixed,
    gls,
    graddrop,
    gradnorm,
    gradvac,
    imtl_g,
    mgda,
    mgda_ub,
    moco,
    modo,
    nash_mtl,
    pcgrad,
    rlw,
    scheduled,
    sdmgrad,
    stch,
    uncertainty,
    upgrad,
)
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

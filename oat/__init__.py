"""oat — once-for-all adversarial training.

One network f(x; λ) conditioned on the trade-off weight λ ∈ [0, 1]: pick the accuracy/robustness
trade-off at inference instead of retraining. See README.md for the tour.
"""

__version__ = "0.1.0"

from .conditioning import (  # noqa: E402
    CategoricalEncoder,
    Conditioning,
    ConditioningConfig,
    DualBatchNorm,
    FiLM,
    FiLMLinear,
    LambdaNorm,
    SinusoidalEncoder,
)
from .lam import as_lambda  # noqa: E402
from .network import FixedLambda, LambdaNetwork, fix_lambda, init_from_plain  # noqa: E402
from .evaluation import evaluate  # noqa: E402
from .deploy import LambdaServer, export  # noqa: E402
from .mixture import MixedEnds  # noqa: E402
from .runs import interpolate_runs as interpolate  # noqa: E402
from .runs import interpolation_barrier_of_runs as interpolation_barrier  # noqa: E402
from .runs import load, mix_ends  # noqa: E402

__all__ = [
    "__version__",
    "as_lambda",
    "CategoricalEncoder",
    "Conditioning",
    "ConditioningConfig",
    "DualBatchNorm",
    "FiLM",
    "FiLMLinear",
    "FixedLambda",
    "LambdaServer",
    "LambdaNetwork",
    "LambdaNorm",
    "MixedEnds",
    "SinusoidalEncoder",
    "evaluate",
    "export",
    "fix_lambda",
    "init_from_plain",
    "interpolate",
    "interpolation_barrier",
    "load",
    "mix_ends",
]

"""Zoo models with seeded random weights for `precompute run` benchmarks (no weights are shipped):

    model: {arch: "python:benchmarks/random_models.py:edsr_baseline_x4"}
"""

from precompute.models import load_model


def edsr_baseline_x4():
    """EDSR-baseline ×4 (16 blocks, 64 features), the zoo's module and spec, random weights."""
    return load_model("edsr-baseline", scale=4, random_weights=True)

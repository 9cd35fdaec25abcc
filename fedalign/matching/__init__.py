"""Post-hoc weight matching (Git Re-Basin), the comparator to training-time alignment.

    spec = spec_for(model)                                   # from the model class
    permuted, sweeps, seconds = match_to(ref_state, other_state, spec)
    model_b2, sweeps, seconds = match_models(model_a, model_b)
"""

from fedalign.matching.spec import (
    PermutationSpec,
    check_spec,
    cnn_spec,
    mlp_spec,
    permutation_spec_from_axes_to_perm,
    resnet20_spec,
    spec_for,
    vgg11_spec,
)
from fedalign.matching.weight_matching import (
    apply_permutation,
    match_models,
    match_to,
    random_permutation,
    weight_matching,
)

__all__ = [
    "PermutationSpec",
    "apply_permutation",
    "check_spec",
    "cnn_spec",
    "match_models",
    "match_to",
    "mlp_spec",
    "permutation_spec_from_axes_to_perm",
    "random_permutation",
    "resnet20_spec",
    "spec_for",
    "vgg11_spec",
    "weight_matching",
]

"""Loss functions: MulSupCon family (:mod:`.mulsupcon`) and the study's in-batch losses.

``STUDY_LOSSES`` maps the keys of *Multi-Label Contrastive Learning: A Comprehensive Study*
(Audibert et al., arXiv 2412.00101) to dense, loop-free implementations; see docs/losses.md.
"""

from mlcdist.losses.mulsupcon import (
    POSITIVES,
    LossTerms,
    Positives,
    bce_with_logits,
    multilabel_supcon,
    multilabel_supcon_terms,
)

__all__ = ["POSITIVES", "LossTerms", "Positives", "bce_with_logits", "multilabel_supcon",
           "multilabel_supcon_terms"]

"""Loss functions: MulSupCon family (:mod:`.mulsupcon`) and the study's in-batch losses.

``STUDY_LOSSES`` maps the keys of *Multi-Label Contrastive Learning: A Comprehensive Study*
(Audibert et al., arXiv 2412.00101) to dense, loop-free implementations; see docs/losses.md.
"""

from typing import Callable

from torch import Tensor

from mlcdist.losses.mulsupcon import (
    POSITIVES,
    LossTerms,
    Positives,
    bce_with_logits,
    multilabel_supcon,
    multilabel_supcon_terms,
)
from mlcdist.losses.jaccard import jaccard_supcon
from mlcdist.losses.mulsupcon_in_batch import mulsupcon_in_batch
from mlcdist.losses.prototypes import msc_loss, proto_loss
from mlcdist.losses.regularised import reg_loss, reg_plain_loss
from mlcdist.losses.supervised import asymmetric_loss, bce_loss, zlpr_loss

STUDY_LOSSES: dict[str, Callable[..., Tensor]] = {
    "jaccard": jaccard_supcon,
    "mulsupcon": mulsupcon_in_batch,
    "proto": proto_loss,
    "msc": msc_loss,
    "reg": reg_loss,
    "reg_plain": reg_plain_loss,
    "zlpr": zlpr_loss,
    "asl": asymmetric_loss,
    "bce": bce_loss,
}

__all__ = ["POSITIVES", "LossTerms", "Positives", "bce_with_logits", "multilabel_supcon",
           "multilabel_supcon_terms", "STUDY_LOSSES", "jaccard_supcon", "mulsupcon_in_batch",
           "proto_loss", "msc_loss", "reg_loss", "reg_plain_loss", "zlpr_loss", "asymmetric_loss",
           "bce_loss"]

"""Pretraining: ``python -m mlcdist.train RECIPE [key=value ...]`` (see ``__main__``).

==============  =============================================================================
module          holds
==============  =============================================================================
``command``     the command line (parse_args, main); ``__main__`` runs it through mlcdist.cli
``trainer``     Trainer: build the run, then loop (fit / epoch / step)
``objective``   one micro-batch's loss: global keys, queue candidates, global normalisation
``state``       save / resume over stateful components (TrainState, ScalerState, RunState)
``runlog``      the run folder's config.yaml, metrics.jsonl and progress
``preempt``     SIGTERM / SIGINT: finish the step, checkpoint, agree across ranks
``collapse``    the collapse guard (mean query cosine vs ln of the candidate count)
``health``      NaN/inf scan of parameters and buffers on logging and checkpoint steps
==============  =============================================================================
"""

from mlcdist.lazy import lazy_attributes

# Lazy, as mlcdist.eval: ``python -m mlcdist.train --help`` imports this package first, and the
# trainer pulls in torch and torchvision (seconds); the command line needs neither to answer.
_HOMES = {"main": "command", "parse_args": "command",
          "NonFiniteLoss": "trainer", "NonFiniteState": "trainer", "Trainer": "trainer"}
__all__ = sorted(_HOMES)


__getattr__ = lazy_attributes("mlcdist.train", _HOMES, globals())

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

from mlcdist.train.command import main, parse_args
from mlcdist.train.trainer import NonFiniteLoss, NonFiniteState, Trainer

__all__ = ["NonFiniteLoss", "NonFiniteState", "Trainer", "main", "parse_args"]

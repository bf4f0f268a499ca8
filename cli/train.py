"""Subcommand `train STAGE`: one of the four retraining stages (`benchmark` is in cli/stages.py)."""
from __future__ import annotations

from cli.args import add_params_args, quiet_user_tracebacks
from cli.stages import add_experiment_arg, experiment_kwargs
from nas_core.config import TRAIN_STAGE_DEFAULTS


def _train(args) -> int:
    from cli.server import stage_api
    from flows.train import FLOWS

    quiet_user_tracebacks()
    with stage_api():
        FLOWS[args.stage](args.params, tuple(args.overrides), **experiment_kwargs(args))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="stages pretrain_imagenet, pretrain_coco, train_coarse, train_fine: "
                                     "retrain the chosen architecture (paper section 5.3.2)")
    p.add_argument("stage", choices=tuple(TRAIN_STAGE_DEFAULTS))  # = nas_core.train.stages.TRAIN_STAGES, without torch
    add_params_args(p)
    add_experiment_arg(p)
    p.set_defaults(func=_train)

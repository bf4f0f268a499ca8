"""Subcommand `train STAGE`: one of the four retraining stages (`benchmark` is in cmd_stages)."""
from __future__ import annotations

from nas_core.config import TRAIN_STAGE_DEFAULTS


def _train(args) -> int:
    from flows.cli import quiet_user_tracebacks
    from flows.cmd_stages import experiment_kwargs
    from flows.server import stage_api
    from flows.train import FLOWS

    quiet_user_tracebacks()
    with stage_api():
        FLOWS[args.stage](args.params, tuple(args.overrides), **experiment_kwargs(args))
    return 0


def add_parser(sub) -> None:
    from flows.cli import add_params_args

    p = sub.add_parser("train", help="stages pretrain_imagenet, pretrain_coco, train_coarse, train_fine: "
                                     "retrain the chosen architecture (paper section 5.3.2)")
    p.add_argument("stage", choices=tuple(TRAIN_STAGE_DEFAULTS))  # nas_core.train.stages.STAGES, without torch
    add_params_args(p)
    from flows.cmd_stages import add_experiment_arg

    add_experiment_arg(p)
    p.set_defaults(func=_train)

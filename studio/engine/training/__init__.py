"""Training: configuration, the training loop, evaluation, devices and torchrun.

``config`` holds `TrainConfig` and the result types; ``loop`` the `train` generator;
``evaluate`` the `evaluate` generator; ``fixed_zeros`` keeps a sparse model sparse while
it trains; ``devices`` device choice, seeding and
out-of-memory messages; ``distributed`` the torchrun process group.
"""
from studio.engine.training.config import (
                                           DEVICES,
                                           OPTIMIZERS,
                                           SCHEDULES,
                                           TRAIN_STATE_FORMAT,
                                           EvalResult,
                                           TrainConfig,
                                           TrainResult,
)
from studio.engine.training.devices import seed_everything, select_device
from studio.engine.training.distributed import cleanup_distributed, init_distributed, is_distributed, is_main_process
from studio.engine.training.evaluate import evaluate
from studio.engine.training.fixed_zeros import FixedZeros
from studio.engine.training.loop import train

__all__ = ["DEVICES", "EvalResult", "FixedZeros", "OPTIMIZERS", "SCHEDULES", "TRAIN_STATE_FORMAT", "TrainConfig", "TrainResult",
           "cleanup_distributed", "evaluate", "init_distributed", "is_distributed", "is_main_process",
           "seed_everything", "select_device", "train"]

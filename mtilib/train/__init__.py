"""Training and evaluation: config, loop, checkpoints, per-case inference."""

from mtilib.train.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from mtilib.train.config import AdversarialConfig, DataConfig, OptimConfig, TrainConfig
from mtilib.train.inference import CasePrediction, evaluate_cases, predict_case, validation_score
from mtilib.train.loop import RunResult, load_volumes, train

__all__ = [
    "AdversarialConfig", "CasePrediction", "CheckpointError", "DataConfig", "OptimConfig", "RunResult",
    "TrainConfig", "evaluate_cases", "load_checkpoint", "load_model", "load_volumes", "predict_case",
    "save_checkpoint", "train", "validation_score",
]

"""Training and evaluation: config, loop, checkpoints, per-case inference, and the helpers the
course notebooks use (the λ_adv schedule, class weights, the heads-vs-TDD game, fast paths)."""

from mtilib.train.adversarial import play_heads_game
from mtilib.train.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from mtilib.train.config import AdversarialConfig, DataConfig, OptimConfig, TrainConfig
from mtilib.train.fastpath import choose_fast_paths
from mtilib.train.gan import adversarial_weight, smooth_one_hot
from mtilib.train.inference import (
    CasePrediction,
    evaluate_cases,
    largest_component,
    lesion_slice_outputs,
    predict_case,
    prediction_report,
    validation_score,
)
from mtilib.train.loop import RunResult, class_weight_tensor, load_volumes, train

__all__ = [
    "AdversarialConfig", "CasePrediction", "CheckpointError", "DataConfig", "OptimConfig", "RunResult",
    "TrainConfig", "adversarial_weight", "choose_fast_paths", "class_weight_tensor", "evaluate_cases",
    "largest_component", "lesion_slice_outputs", "load_checkpoint", "load_model", "load_volumes",
    "play_heads_game", "predict_case", "prediction_report", "save_checkpoint", "smooth_one_hot", "train",
    "validation_score",
]

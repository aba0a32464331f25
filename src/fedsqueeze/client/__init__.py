from .trainer import TrainSettings, evaluate, train_local

__all__ = ["TrainSettings", "evaluate", "train_local"]

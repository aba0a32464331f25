from .trainer import TrainSettings, evaluate, train_local
from .training import train_client, within_seconds

__all__ = ["TrainSettings", "evaluate", "train_client", "train_local", "within_seconds"]

from .trainer import TrainSettings, evaluate, example_losses, train_local
from .training import train_client, within_seconds

__all__ = ["TrainSettings", "evaluate", "example_losses", "train_client", "train_local", "within_seconds"]

"""fedsqueeze: communication-efficient federated LoRA fine-tuning with an exact byte ledger."""

__version__ = "0.1.0"

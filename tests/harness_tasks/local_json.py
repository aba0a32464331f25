"""`custom_dataset` for harness tasks over JSON Lines files that sit beside their YAML.

lm-evaluation-harness resolves `dataset_kwargs.data_files` against the current directory, so a task
written as `dataset_path: json` breaks when run from anywhere else. A YAML that names this loader,

    custom_dataset: !function local_json.load
    dataset_kwargs:
      data_files: {test: my_data.jsonl}

reads its files relative to this file's folder (absolute paths pass through), with no network. Copy it
next to your own task YAMLs to do the same.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(data_files, **_metadata):
    """A DatasetDict with one split per `data_files` key (a str alone is the split `train`)."""
    import datasets

    if isinstance(data_files, (str, Path)):
        data_files = {"train": data_files}
    files = {split: str(HERE / Path(path).expanduser()) for split, path in data_files.items()}
    return datasets.load_dataset("json", data_files=files)

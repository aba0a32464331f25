"""fedsqueeze from Python: a 2-round federated job on the tiny model, its summary, and a report.

python examples/api.py [OUT_DIR]          (default runs/api; replaced if it exists)
"""

import sys
from pathlib import Path

import fedsqueeze

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/api")
config = fedsqueeze.load_config(Path(__file__).with_name("tiny.toml"), ["train.rounds=2"])
result = fedsqueeze.run(config, out=out / "fedavg", overwrite=True, log=None)

s = result.summary
print(f"{s['method']}: {s['rounds']} rounds, {s['bytes_total'] / 1e6:.3f} MB sent,", end=" ")
print(f"final eval loss {s['final_eval_loss']:.4f}")
for r in result.rounds:
    print(f"  round {r['round']}: {r['bytes_up'] + r['bytes_down']} bytes, eval loss {r['eval_loss']:.4f}")
print(f"adapter (peft format): {result.paths.adapter}")
print(fedsqueeze.report([result.paths.out], out=out / "report", overwrite=True).table)

"""CPU seconds of one local step and one eval batch: the quickstart before issue 32 vs now.

Single-threaded, CPU time (time.process_time), so a shared machine inflates it less than wall
time; run with EMULATE_AVX2 settings (ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2) for a CPU
without native bf16. Prints the ratio that scales a measured round time of the old quickstart.

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/quickstart_step_cost.py
"""

from __future__ import annotations

import time

import torch

from fedsqueeze.models import attach_lora, load_base

torch.set_num_threads(1)
torch.manual_seed(0)
SHAPES = {
    # name: (LoRA target, sequence length, local steps, eval examples per set)
    "before (5 rounds x 10 steps, all-linear, 96 tokens, 32 eval)": ("all-linear", 96, 10, 32, 5),
    "now (4 rounds x 5 steps, q_proj+v_proj, 64 tokens, 16 eval)": (["q_proj", "v_proj"], 64, 5, 16, 4),
}


def cost(target, length: int, reps: int = 3) -> tuple[float, float]:
    base, _ = load_base("smollm2-135m")
    model = attach_lora(base, 8, 16, 0.0, target, 0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    ids = torch.randint(0, 49152, (8, length))
    times = []
    for i in range(reps + 1):
        t = time.process_time()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if i:
            times.append(time.process_time() - t)
    with torch.no_grad():
        t = time.process_time()
        model(input_ids=ids, labels=ids)
        forward = time.process_time() - t
    return sorted(times)[len(times) // 2], forward


rounds = {}
for name, (target, length, steps, evals, n_rounds) in SHAPES.items():
    step, forward = cost(target, length)
    per_round = 4 * steps * step + 4 * (evals / 8) * forward
    rounds[name] = (per_round, n_rounds)
    print(f"{name}: step {step:.2f} s, eval batch {forward:.2f} s -> {per_round:.0f} CPU s a round, one thread")
(old, n_old), (new, n_new) = rounds.values()
print(f"a round now costs {new / old:.2f} of one before; the whole run's rounds {new * n_new / (old * n_old):.2f}")

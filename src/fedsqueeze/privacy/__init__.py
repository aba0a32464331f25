"""Client-level differential privacy (`[privacy]`, docs/PRIVACY.md).

rules.py      which combinations keep the guarantee; refusals and unproven ones (config time)
accountant.py dp-accounting's RDP accountant: epsilon per round, noise calibrated to a target
plan.py       Plan: the resolved noise, sensitivity and the guarantee a run may claim
noise.py      clipping, Gaussian noise, the secret the noise is drawn from
central.py    CentralNoise: the server clips contributions and noises their mean
local.py      LocalNoise: a client clips and noises its own update

Submodules are imported where used (rules.py needs no torch, so a config check stays light).
"""

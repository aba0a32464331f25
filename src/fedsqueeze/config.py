"""Typed, validated run configuration: a TOML file plus `--set key=value` overrides.

Every error names the offending key and what is allowed (see `ConfigError`). This module is the
bottom layer: it imports neither torch nor anything above it. `validate` checks the schema, every
cross-key rule and the names of the method, runtime and codec stages (registry.py's catalog, nothing
imported); checks.py then checks what needs a method's or a stage's class, before anything loads.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import tomli_w
import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .codec_spec import parse_spec
from .errors import ConfigError
from .owners_folder import is_owners, resolve
from .registry import CODECS, METHODS, RUNTIMES, TRACKERS

log = logging.getLogger(__name__)
Precision = Literal["auto", "fp32", "bf16", "fp16"]
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class Section(BaseModel):
    # strict: `data.clients = true` or `uplink.codec = 8` is a mistake, not a 1 or an "8";
    # allow_inf_nan=False: every float setting is finite (`--set x=1e999`, TOML `inf` / `nan` are
    # refused naming the key); a setting that can mean "none" says so with None, never infinity.
    # use_attribute_docstrings: a knob's docstring is its pydantic description (the one way to
    # declare a knob: a typed field with a description, as methods' Params declare theirs).
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False, use_attribute_docstrings=True
    )


class ModelConfig(Section):
    name: str = "tiny"
    """HF id, local folder, .gguf file, or an alias: `tiny`, `smollm2-135m`, and the shipped
    architectures `llama-3.2-3b`, `qwen2-7b`, `llama-3.1-8b` (`fedsqueeze size`, `init = "random"`)."""
    revision: str | None = None
    dtype: Precision = "auto"
    """Frozen base weights. auto: the training precision on a GPU, fp32 on a CPU."""
    quantize: Literal["none", "8bit", "4bit"] = "none"
    """QLoRA: base weights in bitsandbytes 8-bit or NF4 (double quantization); needs CUDA and the [gpu] extra."""
    init: Literal["pretrained", "random"] = "pretrained"
    """random: the architecture with seeded random weights (speed and memory tests, no download)."""


class LoraConfig(Section):
    r: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target: list[str] | Literal["all-linear"] = ["q_proj", "k_proj", "v_proj", "o_proj"]


class DataConfig(Section):
    source: str = "builtin:pystdlib"
    """jsonl:PATH, csv:PATH, parquet:PATH, hf:NAME[:SPLIT], builtin:pystdlib, dictd:PATH, wordnet:PATH;
    several sources joined with ' + ' (each becomes one domain unless it has a domain field)."""
    partition: Literal["iid", "dirichlet", "by-domain", "natural", "pathological", "shards"] = "by-domain"
    """iid; dirichlet (shares of each label ~ Dirichlet(data.dirichlet_alpha)); by-domain / natural (one
    owner per value of data.label, flwr-datasets' NaturalIdPartitioner); pathological (data.labels_per_owner
    labels per owner); shards (sorted by label, cut into data.shards_per_owner shards per owner)."""
    clients: int = Field(4, ge=1, le=10_000)
    dirichlet_alpha: float = Field(0.5, gt=0)
    labels_per_owner: int = Field(2, ge=1)
    """pathological: the number of distinct labels each owner holds."""
    shards_per_owner: int = Field(2, ge=1)
    """shards: the number of label-sorted shards each owner holds."""
    label: str = "domain"
    """What the partitioners split on: "domain", "source" (the name of each joined source), "category"
    (WordNet lexicographer file, stdlib module) or a table column. With data.task = "classify" and this
    left at "domain", the label-skew partitioners (dirichlet, pathological, shards) split on the class."""
    task: Literal["instruct", "classify"] = "instruct"
    """instruct: instruction -> response. classify: data.text_field -> the label in data.label_field,
    the label spoken as the response; judged by log-likelihood over the label set (eval metric classify)."""
    text_field: str = "text"
    """classify: the column (or example key) holding the text to classify."""
    label_field: str = "label"
    """classify: the column (or example key) holding its label."""
    labels: list[str] | dict[str, str] | None = None
    """classify: the label set in order (None: the distinct values found in the data); a table
    {value = "words"} also says how each label is spoken (its verbalizer)."""
    instruction: str | None = None
    """classify: the instruction of every prompt (None: "Label the TEXT_FIELD with its LABEL_FIELD.")."""
    instruction_field: str = "instruction"
    input_field: str = "input"
    response_field: str = "response"
    domain_field: str = "domain"
    template: Literal["alpaca", "chat"] = "alpaca"
    max_length: int = Field(96, ge=8, le=32_768)
    max_examples: int | None = Field(None, ge=1)
    """Cap on examples per client (after partitioning), for quick runs."""
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    eval_examples: int = Field(32, ge=1)
    """Held-out examples per client used for the per-round eval."""
    ood_source: str | None = None
    """Optional out-of-domain eval set (e.g. dictd:/usr/share/dictd/gcide), reported as `ood`."""
    choices_field: str | None = None
    """A table column holding each example's own answer choices (a list of texts), for eval.metrics
    "choice"; with answer_field. None: choices are drawn from other responses of the same domain."""
    answer_field: str | None = None
    """The column naming the right choice: its index (0-based) or its text."""
    owners: list[str] | None = None
    """source = "owners:DIR": the owners' names (file stems, sorted), filled from DIR where the config
    is loaded, so that machines without the folder (the coordinator, each node) know them."""


class TrainConfig(Section):
    rounds: int = Field(3, ge=1)
    local_steps: int = Field(10, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(5e-4, gt=0, le=1.0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    device: str = "auto"
    """auto (cuda if available, else mps, else cpu) | cpu | cuda | cuda:N | mps."""
    precision: Precision = "auto"
    """auto: bf16 where the hardware does it natively (CPU: oneDNN's check; CUDA: is_bf16_supported),
    else fp16 with loss scaling on CUDA, else fp32. On a CPU without native bf16 it is ~7x slower."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, ~30% more compute."""
    micro_batch_size: int | None = Field(None, ge=1)
    """Gradient accumulation: each step's batch runs in chunks of this many examples (same update)."""
    pad_to: Literal["longest", "max_length"] = "longest"
    """Training batches padded to their longest example, or always to data.max_length: every step
    then has one shape, so a round's peak memory is set by the config, not by which examples the round
    draws (the same update up to float rounding; more compute where examples are short)."""
    clients_per_round: int | None = Field(None, ge=1)
    """None: every client every round."""
    weighting: Literal["examples", "uniform"] = "examples"
    threads: int | None = Field(None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _bf16_alias(cls, data):
        if isinstance(data, dict) and "bf16" in data:
            data = dict(data)
            value = data.pop("bf16")
            if not isinstance(value, bool):
                raise ValueError(f"train.bf16 (deprecated) must be true or false, got {value!r}")
            data.setdefault("precision", "bf16" if value else "fp32")
            log.warning(
                "config key 'train.bf16' is deprecated: use train.precision = %r (or \"auto\")", data["precision"]
            )
        return data

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not DEVICE_PATTERN.match(value):
            raise ValueError("allowed: auto, cpu, cuda, cuda:N, mps")
        return value


EVAL_AUTO_LIMIT = 16
EVAL_METRICS = ("loss", "choice", "rouge", "exact", "classify")
"""eval.clients = "auto": every eval set up to this many, else a seeded sample of this many."""


class EvalConfig(Section):
    """Held-out evaluation: how often, of which clients' sets, and how they are combined.

    Each evaluation judges a sample of the federation's eval sets (one per original client) seeded
    by (seed, round), so every runtime and a resumed run judge the same sets; round 0 is the
    reference before training, and summary.json judges the final adapter on round 0's sets again."""

    every: int = Field(1, ge=1)
    """Evaluate after every this many rounds (and always after the last)."""
    clients: int | Literal["all", "auto"] = "auto"
    """Eval sets judged per evaluation: a number, "all", or "auto" (all up to 16 sets, else 16)."""
    pooled: bool = False
    """Judge the sampled sets' examples as one pooled set: eval_loss is token-weighted over all of
    them and `eval` breaks it down by domain (by eval set where all examples share one domain)."""
    metrics: list[str] = ["loss"]
    """Any of loss (always judged), choice (multiple-choice acc / acc_norm), rouge (Rouge-L F1 of
    greedy generations), exact (exact match of them after normalisation), classify (accuracy, macro-F1
    and confusion matrix over the label set; added by itself when data.task = "classify")."""
    choices: int = Field(4, ge=2, le=26)
    """choice: continuations per question (the answer and choices - 1 distractors); chance 1/choices."""
    max_new_tokens: int = Field(48, ge=1, le=4096)
    """rouge / exact: greedy decoding stops after this many new tokens (or EOS)."""
    generate_examples: int = Field(32, ge=1)
    """rouge / exact: held-out examples generated for per eval set (a sample seeded by seed and set)."""
    at: Literal["server", "clients", "both"] | None = None
    """Who judges: the server on the held-out sets it holds, the clients each on its own (they reply
    sums and counts; the figure is their example-weighted mean), or both. None: "clients" for
    per-owner data (data.source = "owners:DIR"), else "server"."""
    ride: bool = True
    """eval.at = "clients": round r's evaluation rides on round r + 1's train message where it can (the
    owner scores the adapter it has just received, before training; its sums come back with its
    upload; no bytes more). Only for methods whose clients receive the global adapter exactly
    (`Method.eval_rides`, a lossless downlink); owners not sampled in round r + 1, and the last
    round, get evaluate messages. False: evaluate messages always (figures written with their round)."""

    @field_validator("metrics", mode="before")
    @classmethod
    def _metrics_text(cls, value):
        """`eval.metrics = "loss,choice"` reads as the list (the CLI's --metrics form)."""
        return [m.strip() for m in value.split(",") if m.strip()] if isinstance(value, str) else value

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: list[str]) -> list[str]:
        bad = [m for m in value if m not in EVAL_METRICS]
        if bad or not value:
            raise ValueError(f"{bad or 'empty'}: allowed: a list of any of {', '.join(EVAL_METRICS)}")
        if len(set(value)) < len(value):
            raise ValueError("a metric is listed twice")
        return value

    @property
    def generates(self) -> bool:
        """Whether an evaluation generates text (rouge or exact)."""
        return "rouge" in self.metrics or "exact" in self.metrics

    @field_validator("clients")
    @classmethod
    def _clients(cls, value):
        if isinstance(value, int) and value < 1:
            raise ValueError('a number of eval sets (at least 1), "all" or "auto"')
        return value

    def sample_size(self, total: int) -> int:
        """How many of `total` eval sets one evaluation judges."""
        if self.clients == "all":
            return total
        if self.clients == "auto":
            return min(total, EVAL_AUTO_LIMIT)
        return min(total, self.clients)


class LinkConfig(Section):
    codec: str | None = None
    """None: the method's default (fp32 for most). A codec or a chain, e.g.
    "topk(fraction=0.01) > quantize(bits=8) > zstd"."""
    error_feedback: bool | None = None
    """None: the method's default (off for most)."""


class RuntimeConfig(Section):
    kind: str = "local"
    """local (in-process simulation), flower-sim, or any runtime registered in runtime/registry.py."""
    round_timeout: float = Field(600.0, gt=0)
    """Flower: seconds the server waits for a round's replies; clients that have not answered are left out."""
    connect_timeout: float = Field(300.0, ge=0)
    """Flower deployment: seconds to wait at start for a SuperNode per client (then go on with those there)."""
    sim_workers: int = Field(1, ge=1)
    """flower-sim: ClientApps that run at once (Ray actors, one CPU each)."""
    sim_gpus: float = Field(0.0, ge=0, le=1)
    """flower-sim: the fraction of a GPU each ClientApp actor reserves (0.25: four share one GPU); 0: none."""
    state_cache_mb: float = Field(256.0, gt=0)
    """MB of per-client state (error-feedback memory, the server's per-client views) kept in memory;
    the rest lives in files under the run directory (state/), read when a client is sampled."""


class NetworkConfig(Section):
    """Simulated client speeds for the clock (`sim_seconds`): any run's bytes become projected
    wall-clock under this network. Lists give one value per client; a scalar applies to all."""

    step_seconds: float = Field(1.0, gt=0)
    """Seconds one local step takes on a client of compute speed 1 (fixed, so the clock is deterministic)."""
    compute: float | list[float] = 1.0
    """Relative compute speed per client, e.g. [1, 1, 1, 0.25] makes client 3 a 4x straggler."""
    up_mbps: float | list[float] = 20.0
    down_mbps: float | list[float] = 100.0
    latency_ms: float | list[float] = 50.0
    spread: float = Field(0.0, ge=0)
    """Sigma of a seeded log-normal factor drawn per client on compute and bandwidth (0: none)."""


class HybridConfig(Section):
    """Asynchronous-synchronous hybrid: a round closes when a quorum of its clients has reported
    or a deadline passes; late updates join a later round with weight (1 + staleness)^-exponent."""

    quorum: float = Field(1.0, gt=0, le=1)
    """Fraction of the round's sampled clients to wait for (1 = synchronous)."""
    deadline: float | None = Field(None, gt=0)
    """Seconds after which a round closes whatever has arrived (simulated in-process, real on Flower)."""
    max_staleness: int = Field(3, ge=0)
    """Late updates older than this many rounds are dropped (and logged; their bytes still count)."""
    staleness_exponent: float = Field(0.5, ge=0)
    partial_work: bool = False
    """A client that would miss the deadline trains only the local steps that fit before it (at
    least one), so it still reports in time instead of arriving rounds late. Needs a deadline."""


class ServerConfig(Section):
    """Admission: what an upload must pass before it can touch the aggregate (every method, every
    runtime). A rejected upload is left out of its round, logged, billed, and listed in `rejected`."""

    max_update_norm: float | None = Field(1e6, gt=0)
    """Reject an upload whose L2 norm is above this (None: no absolute bound)."""
    norm_factor: float | None = Field(10.0, gt=1)
    """Reject an upload whose norm is above this many times the median norm of the round's other
    uploads (None: no relative bound; needs at least two uploads in the round)."""
    max_client_weight: float = Field(0.5, gt=0, le=1)
    """Where only a client knows its example count (per-owner data), the largest share of a round's
    total weight its claim may get (in aggregation and in client-side evaluation); capped and logged."""


FAULT_KINDS = (
    "nan",
    "inf",
    "scale",
    "sign-flip",
    "truncate",
    "bitflip",
    "garbage",
    "missing",
    "foreign",
    "inflate-examples",
    "drop",
    "slow",
)


class FaultsConfig(Section):
    """Faults injected on purpose (robustness experiments): the named clients, in the named rounds,
    send a bad upload of `kind` instead of their honest one (simulations and Flower alike)."""

    clients: list[int] = []
    rounds: list[int] | None = None
    """None: every round."""
    kind: Literal[FAULT_KINDS] | None = None  # type: ignore[valid-type]
    scale: float = 1e3
    """`scale` multiplies the upload by this, `sign-flip` by minus this."""


class PrivacyConfig(Section):
    """Client-level differential privacy (docs/PRIVACY.md): `central` (the server clips each client's
    contribution and noises the round's mean) or `local` (each client clips and noises its own update
    before anything leaves it). The noise is `noise_multiplier`, or calibrated by the accountant so
    the run ends at `target_epsilon` for `delta`."""

    mode: Literal["none", "central", "local"] = "none"
    clip_norm: float = Field(1.0, gt=0)
    """L2 bound of one client's contribution (the starting bound under adaptive_clipping)."""
    noise_multiplier: float | None = Field(None, gt=0)
    """Noise std over the L2 sensitivity (dp-accounting's definition; the sensitivity is 2 x clip_norm:
    a client's data replaced). None: calibrated from target_epsilon."""
    target_epsilon: float | None = Field(None, gt=0)
    delta: float | None = Field(None, gt=0, lt=1)
    adaptive_clipping: bool = False
    """central: the bound follows `target_quantile` of the clients' update norms (Andrew et al. 2021)."""
    target_quantile: float = Field(0.5, gt=0, lt=1)
    clip_learning_rate: float = Field(0.2, gt=0)
    clipped_count_stddev: float | None = Field(None, gt=0)
    """adaptive_clipping: noise std on the count of unclipped clients (None: clients per round / 20)."""
    order: Literal["noise-first", "select-first"] = "noise-first"
    """local: noise the whole update, then the method selects (keeps the guarantee), or let the method
    select on the clean update and noise only what it kept (Fed-SMP's cheaper order; positions leak)."""
    allow_unproven: bool = False
    """Run a combination that voids the guarantee, labelled "no formal guarantee" in summary.json."""
    noise_seed: int | None = None
    """Tests only: noise (and the secret client sampling) from this seed instead of os.urandom;
    anyone with the config can then subtract the noise, and the summary says so."""


class TrackConfig(Section):
    """Experiment trackers fed the same records as rounds.jsonl (step = server round), written
    inside the run directory (track/); off by default. docs/ARCHITECTURE.md "metrics/track"."""

    to: list[str] = []
    """Any of "tensorboard", "wandb" (offline: `wandb sync` uploads it later), "mlflow" (a file store)."""
    project: str = "fedsqueeze"
    """The W&B project / MLflow experiment name."""
    run_name: str | None = None
    """None: the run directory's name."""


class Config(Section):
    method: str = "fedavg"
    seed: int = 0
    model: ModelConfig = ModelConfig()
    lora: LoraConfig = LoraConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    uplink: LinkConfig = LinkConfig()
    downlink: LinkConfig = LinkConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    network: NetworkConfig = NetworkConfig()
    hybrid: HybridConfig = HybridConfig()
    server: ServerConfig = ServerConfig()
    faults: FaultsConfig = FaultsConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    track: TrackConfig = TrackConfig()
    params: dict[str, Any] = {}
    """Method-specific parameters, validated by the method's own `Params` model."""

    @model_validator(mode="before")
    @classmethod
    def _eval_every_alias(cls, data):
        train = data.get("train") if isinstance(data, dict) else None
        if not (isinstance(train, dict) and "eval_every" in train):
            return data
        data, train = dict(data), dict(train)
        value = train.pop("eval_every")
        section = data.get("eval", {})
        if not isinstance(section, dict):
            return data  # `eval` itself is wrong: reported as such
        data["train"], data["eval"] = train, {"every": value, **section}
        log.warning("config key 'train.eval_every' is deprecated: use eval.every = %r", data["eval"]["every"])
        return data

    def to_toml(self) -> str:
        return tomli_w.dumps(self.model_dump(exclude_none=True))


# What a resume may change: how long, how often evaluated, and where and how fast it computes.
# Everything else defines the federation, model, adapter, method, codecs, seed or which sets are
# judged (the reference evaluation before round 1 was made with them).
RESUMABLE = (
    "train.rounds",
    "eval.every",
    "eval.ride",
    "train.threads",
    "train.device",
    "train.precision",
    "train.gradient_checkpointing",
    "train.micro_batch_size",
    "train.pad_to",
    "model.dtype",
    "runtime.",
    "track.",
)


def resume_differences(saved: Config, new: Config) -> list[str]:
    """'key: saved -> new' for every key that differs and may not change on resume."""
    a, b = _flatten(saved.model_dump()), _flatten(new.model_dump())
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not k.startswith(RESUMABLE))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys]


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _parse_value(text: str) -> Any:
    """TOML scalar/array/inline-table if it parses as one, else the raw string. `nan` and `inf`
    stay text (TOML would read floats): a float key still reads them as floats, a name key
    (faults.kind = nan) as the name."""
    if text.strip().lstrip("+-") in ("nan", "inf"):
        return text.strip()
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(raw: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value (e.g. train.rounds=2)")
    key, _, value = assignment.partition("=")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a section")
    node[parts[-1]] = _parse_value(value.strip())


def _describe(err: Mapping[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        section = err["loc"][:-1]
        allowed = _allowed_keys(section)
        return f"unknown config key {key!r}; allowed here: {', '.join(allowed)}"
    got = err.get("input")
    if kind == "finite_number" or kind == "float_type" and str(got).strip().lstrip("+-").lower() in _NOT_FINITE:
        return f"config key {key!r}: must be a finite number; infinity and NaN are not settings (got {got!r})"
    return f"config key {key!r}: {err['msg'].removeprefix('Value error, ')} (got {got!r})"


_NOT_FINITE = ("inf", "nan", "infinity")


def _allowed_keys(section: tuple) -> list[str]:
    model: type[BaseModel] = Config
    for part in section:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return []
        model = field.annotation
    return list(model.model_fields)


def validate(raw: dict) -> Config:
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("; ".join(_describe(e) for e in exc.errors())) from None
    METHODS.check(cfg.method)  # raises ConfigError naming the allowed methods (imports nothing)
    RUNTIMES.check(cfg.runtime.kind)
    for name in cfg.track.to:
        TRACKERS.check(name)
    if is_owners(cfg.data.source):
        resolve(cfg)  # data.owners and data.clients from the folder (eval.at's rule: checks.py)
    if cfg.train.micro_batch_size is not None and cfg.train.micro_batch_size > cfg.train.batch_size:
        raise ConfigError(
            f"config key 'train.micro_batch_size': {cfg.train.micro_batch_size} is more than "
            f"train.batch_size ({cfg.train.batch_size}); it splits each batch, so at most that"
        )
    if cfg.train.clients_per_round is not None and cfg.train.clients_per_round > cfg.data.clients:
        raise ConfigError(
            f"config key 'train.clients_per_round': {cfg.train.clients_per_round} is more than "
            f"data.clients ({cfg.data.clients})"
        )
    if isinstance(cfg.eval.clients, int) and cfg.eval.clients > cfg.data.clients:
        raise ConfigError(
            f"config key 'eval.clients': {cfg.eval.clients} is more than the {cfg.data.clients} eval sets "
            '(one per client, data.clients); use a smaller number or "all"'
        )
    for link in ("uplink", "downlink"):
        if getattr(cfg, link).codec is not None:
            check_codec_names(f"{link}.codec", getattr(cfg, link).codec)
    if cfg.faults.clients and cfg.faults.kind is None:
        raise ConfigError(
            f"config key 'faults.kind': faults.clients = {cfg.faults.clients} needs a kind; "
            f"allowed: {', '.join(FAULT_KINDS)}"
        )
    if any(not 0 <= c < cfg.data.clients for c in cfg.faults.clients):
        raise ConfigError(
            f"config key 'faults.clients': {cfg.faults.clients} must be client ids "
            f"0..{cfg.data.clients - 1} (data.clients = {cfg.data.clients})"
        )
    if (cfg.data.choices_field is None) != (cfg.data.answer_field is None):
        given = "choices_field" if cfg.data.choices_field is not None else "answer_field"
        other = "answer_field" if given == "choices_field" else "choices_field"
        raise ConfigError(f"config key 'data.{given}': needs 'data.{other}' too (the choices and the right one)")
    _check_classify(cfg)
    if cfg.hybrid.partial_work and cfg.hybrid.deadline is None:
        raise ConfigError(
            "config key 'hybrid.partial_work': true needs 'hybrid.deadline' (seconds) to size the work by"
        )
    return cfg


def check_codec_names(key: str, spec: str) -> None:
    """The spec's grammar and every stage name, against the catalog (no stage imported); each
    stage's parameters and the chain's order are checked by checks.py with the stages' classes."""
    if not spec.strip():
        raise ConfigError(
            f"config key {key!r}: empty; name a codec (e.g. fp32, sparse > zstd) or leave the key out for the "
            "method's default"
        )
    try:
        stages = parse_spec(spec)
    except ConfigError as exc:
        raise ConfigError(f"config key {key!r}: {exc}") from None
    for name, _ in stages:
        if name not in CODECS:
            raise ConfigError(
                f"config key {key!r}: unknown codec stage {name!r} in {spec!r}; allowed: {', '.join(CODECS.names())}"
            )


def _check_classify(cfg: Config) -> None:
    """data.task = "classify" and its keys: a label set of at least two distinct labels, the classify
    metric judged (added when not listed), never asked for without the task."""
    data = cfg.data
    if data.task != "classify":
        # (values, not keys set: a saved config.toml writes every key with its default)
        defaults = DataConfig()
        keys = ("text_field", "label_field", "labels", "instruction")
        stray = [k for k in keys if getattr(data, k) != getattr(defaults, k)]
        if stray:
            raise ConfigError(
                f"config key 'data.{stray[0]}': only with data.task = \"classify\" (data.task is {data.task!r}); "
                "allowed tasks: instruct, classify"
            )
        if "classify" in cfg.eval.metrics:
            raise ConfigError(
                "config key 'eval.metrics': classify needs data.task = \"classify\" (a text field and a label field)"
            )
        return
    if data.labels is not None:
        values = list(data.labels)
        spoken = list(data.labels.values()) if isinstance(data.labels, dict) else values
        if len(values) < 2:
            raise ConfigError(f"config key 'data.labels': at least 2 labels, got {data.labels!r}")
        if any(not str(v).strip() for v in spoken) or len({str(v).strip() for v in spoken}) < len(spoken):
            raise ConfigError(
                "config key 'data.labels': every label must be spoken as a distinct non-empty text, "
                f"got {data.labels!r}"
            )
    if data.text_field == data.label_field:
        raise ConfigError(f"config key 'data.label_field': {data.label_field!r} is data.text_field too")
    if data.choices_field is not None:
        raise ConfigError(
            "config key 'data.choices_field': not with data.task = \"classify\" (the labels are the choices)"
        )
    bad = [m for m in cfg.eval.metrics if m in ("choice", "rouge", "exact")]
    if bad:
        raise ConfigError(
            f"config key 'eval.metrics': {', '.join(bad)} with data.task = \"classify\"; allowed: loss, classify"
        )
    if "classify" not in cfg.eval.metrics:
        cfg.eval.metrics = [*cfg.eval.metrics, "classify"]


def load(path: str | Path | None, overrides: Iterable[str] = ()) -> Config:
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for item in overrides:
        apply_override(raw, item)
    return validate(raw)

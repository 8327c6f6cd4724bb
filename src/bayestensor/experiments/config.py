"""Run configuration: dataclass sections read from TOML that reject unknown keys, with typed dotted overrides."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..tensors.optimizer_state import OPTIMIZER_STATES


class ConfigError(ValueError):
    """A configuration file or override that does not match the schema."""


@dataclass
class ModelConfig:
    """What to build: tensor format, ranks and the Bayesian treatment of the ranks."""

    format: str = "ttm"
    max_rank: int = 10  # 0: ranks from a parameter budget, 10 % of each dense weight (the layers' max_rank=None)
    method: str = "map"  # "map" | "svi" | "none" (fixed ranks) | "svgd" | "sghmc" (MAP, then the [sampler] phase)
    prior: str = "half_cauchy"
    prior_kwargs: dict[str, float] = field(default_factory=dict)
    init: str = "random"  # how the tensorized layers' factors start: "random" | "frames" (isometric frames)
    dense: bool = False
    hidden: int = 256
    dropout: float = 0.0
    width: float = 1.0  # channel multiplier of the CNNs and ResNets (--smoke shrinks it)
    depth: int = 20  # CIFAR ResNet depth: 6n + 2 (20, 32, 110, ...); ViT blocks
    heads: int = 4  # ViT attention heads
    embedding_dim: int = 128  # DLRM embedding width; ViT token width
    bottom_mlp: str = "512-256-128"  # DLRM: hidden sizes after the 13 dense features; the last is embedding_dim
    top_mlp: str = "512-256-1"  # DLRM: sizes after the interaction features
    tensorized_tables: int = 5  # DLRM: how many of the largest tables are tensorized
    table_modes: int = 3  # DLRM: row modes of a tensorized table (e.g. 200 x 220 x 250)


@dataclass
class TrainConfig:
    """How to train: optimiser, KL warm-up, pruning schedule."""

    epochs: int = 80
    batch_size: int = 64
    lr: float = 3e-3
    lr_schedule: str = "constant"  # "constant" | "cosine": lr * (1 + cos(pi * epoch / epochs)) / 2 per epoch
    seed: int = 0
    kl_weight: float = 0.2
    no_kl_epochs: int = 2
    warmup_epochs: int = 10
    prune_every: int = 5
    prune_start: int = 5
    prune_threshold: float = 1e-3
    tolerance: float = 0.0  # bt.ARD(tolerance=...): allowed relative rise of the training loss; 0 = off
    finetune_epochs: int = -1  # bt.ARD(finetune_epochs=...): last epochs, prior off, ranks fixed; -1 = ARD's default
    target_compression: float = 0.0  # bt.ARD(target_compression=...): the tensorized layers' compression; 0 = off
    optimizer_state: str = "reset"  # bt.ARD(optimizer_state=...): "reset" | "transport" the regauged factors' moments
    predict_samples: int = 32
    device: str = "cpu"
    threads: int = 0  # torch.set_num_threads per process; 0 leaves the default
    compile: str = "off"  # "off" | "on" | "auto": the batch objective under torch.compile (auto: eager if it fails)


@dataclass
class SamplerConfig:
    """The posterior sampler run after the MAP epochs when ``model.method`` is ``"svgd"`` or ``"sghmc"``."""

    particles: int = 8  # SVGD particles / SGHMC chains
    init: str = "scratch"  # "scratch": fresh draws at the ranks ARD found; "map": copies of the MAP model (+ jitter)
    epochs: float = 0.0  # passes over the training data in train.batch_size batches (0.5: half); 0 = train.epochs
    lr: float = 0.0  # SVGD: Adam step (0 = train.lr); SGHMC: step size on the mean loss (0 = 0.01)
    jitter: float = 0.01  # init "map": particles 2..P get every entry perturbed by jitter * RMS of its parameter
    keep_optimizer: bool = True  # SVGD with init "map": the particles continue the MAP fit's Adam state (else fresh)
    bandwidth: float = 0.0  # SVGD RBF bandwidth h; 0 = the median heuristic
    temperature: float = 1.0  # both samplers target p(theta | D)^(1/T); 1 = the posterior, < 1 = "cold"
    drive: str = "parameters"  # SVGD: the kernel mixes "parameters" gradients, or the outputs' ("function": 1 backward)
    friction: float = 0.1  # SGHMC friction alpha in (0, 1]
    burn_in: float = 0.5  # SGHMC: fraction of the sampler's steps before the first kept sample, in [0, 1)
    thin: int = 0  # SGHMC steps between kept samples; 0 = spread max_samples evenly over the steps after burn-in
    max_samples: int = 32  # SGHMC: kept samples over all chains (the most recent)
    execution: str = (
        "auto"  # "vmap": particles in one vmap call; "loop": functional calls; "auto": loop for convs on CPU
    )


@dataclass
class DataConfig:
    """Where the data lives and how much of it to use."""

    data_dir: str = ""
    test_fraction: float = 0.25
    limit: int = 0  # 0 = all examples; --smoke sets a small number
    validation: int = 0  # training examples held out to decide pruning by their loss (needs train.tolerance > 0)
    synthetic: bool = False  # DLRM: synthetic clicks (true Kaggle cardinalities) instead of train.txt
    max_rows: int = 0  # DLRM: read only the first max_rows lines of train.txt (0 = the whole file)
    train_batches: int = 200  # DLRM synthetic: batches per epoch (all processes together)
    test_batches: int = 20  # DLRM: synthetic test batches; for train.txt, 0 = the whole held-out split
    max_cardinality: int = 0  # DLRM: cap every table at this many rows (0 = the true sizes)
    teacher: str = "tt"  # DLRM synthetic: "tt" (planted TT tables) or "hashed" (independent per-id features)
    teacher_tt_rank: int = 4  # DLRM synthetic, teacher "tt": TT rank between the teacher tables' row modes


@dataclass
class RunConfig:
    """A whole run: experiment name, sections and output folder."""

    experiment: str = "digits-fc"
    name: str = ""
    out: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    data: DataConfig = field(default_factory=DataConfig)

    @property
    def run_name(self) -> str:
        """Folder name of the run under :attr:`out`."""
        if self.name:
            return self.name
        kind = "dense" if self.model.dense else f"{self.model.format}-{self.model.method}"
        return f"{self.experiment}-{kind}"

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (TOML-serialisable)."""
        return dataclasses.asdict(self)


def check_values(cfg: RunConfig) -> None:
    """The ranges that types alone do not give, checked before a run builds or writes anything.

    Raises :class:`ConfigError` naming the key, what it expects and what it got. (Keys checked
    where they are used: the schedule's by :class:`~bayestensor.ARD`, the sampler's by
    ``check_sampler_config``, ``model.max_rank`` and ``model.init`` by the model's layers.)
    """
    t, d = cfg.train, cfg.data
    try:
        device_type = torch.device(t.device).type
    except RuntimeError:
        device_type = None
    checks = [
        ("train.device", device_type in ("cpu", "cuda"), "cpu, cuda or cuda:N"),
        ("train.batch_size", t.batch_size >= 1, "an integer >= 1"),
        ("train.lr", math.isfinite(t.lr) and t.lr > 0, "a finite number > 0"),
        ("train.predict_samples", t.predict_samples >= 1, "an integer >= 1 (posterior predictive draws)"),
        ("train.threads", t.threads >= 0, "an integer >= 0 (0 = torch's default)"),
        ("train.optimizer_state", t.optimizer_state in OPTIMIZER_STATES, " or ".join(map(repr, OPTIMIZER_STATES))),
        ("data.limit", d.limit >= 0, "an integer >= 0 (0 = all examples)"),
        ("data.validation", d.validation >= 0, "an integer >= 0"),
        ("data.test_fraction", 0 < d.test_fraction < 1, "a fraction in (0, 1)"),
        ("name", not cfg.name or (Path(cfg.name).name == cfg.name and cfg.name not in (".", "..")),
         "a folder name under out (no path separators)"),
    ]  # fmt: skip
    for key, ok, expected in checks:
        if not ok:
            section, _, field_name = key.rpartition(".")
            value = getattr(getattr(cfg, section) if section else cfg, field_name)
            raise ConfigError(f"{key}: expected {expected}, got {value!r}")


def _check_type(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected a boolean (true/false), got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if isinstance(default, dict):
        if not isinstance(value, dict) or not all(isinstance(v, int | float) for v in value.values()):
            raise ConfigError(f"{key}: expected a table of numbers, got {value!r}")
        return {k: float(v) for k, v in value.items()}
    raise ConfigError(f"{key}: unsupported type {type(default).__name__}")


def merge(cfg: Any, data: dict[str, Any], prefix: str = "") -> None:
    """Merge a nested dict into a config dataclass in place, rejecting unknown keys by name."""
    known = {f.name: f for f in fields(cfg)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        where = f"section [{prefix[:-1]}]" if prefix else "the top level"
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)} in {where}; "
            f"expected one of: {', '.join(prefix + k for k in known)}"
        )
    for key, value in data.items():
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{key}: expected a section (table), got {value!r}")
            merge(current, value, prefix=f"{prefix}{key}.")
        else:  # typed by the declared default: an experiment giving a float field an int keeps it a float field
            declared = known[key].default
            setattr(cfg, key, _check_type(prefix + key, value, current if declared is MISSING else declared))


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file with a clear error for missing or malformed files."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} {'is a folder' if p.is_dir() else 'does not exist'}")
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML: {err}") from None


def _parse_literal(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string


def apply_override(cfg: RunConfig, assignment: str) -> None:
    """Apply one ``--set section.key=value`` override, type-checked against the current value."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    node: Any = cfg
    for i, part in enumerate(parts[:-1]):
        if not dataclasses.is_dataclass(node) or part not in {f.name for f in fields(node)}:
            raise ConfigError(f"--set {key}: unknown section {'.'.join(parts[: i + 1])!r}")
        node = getattr(node, part)
        if isinstance(node, dict):  # e.g. model.prior_kwargs.eta
            value = _parse_literal(text)
            node[parts[-1]] = _check_type(key, value, 0.0)
            return
    if not dataclasses.is_dataclass(node):
        raise ConfigError(f"--set {key}: {'.'.join(parts[:-1])} is a value, not a section")
    value = _parse_literal(text)
    if isinstance(getattr(node, parts[-1], None), str) and not isinstance(value, str):
        value = text  # strings need no quotes on the command line
    nested: dict[str, Any] = {parts[-1]: value}
    merge(node, nested, prefix=".".join(parts[:-1]) + "." if len(parts) > 1 else "")


def dump_toml(data: dict[str, Any]) -> str:
    """Write a nested dict of scalars, dicts of numbers and sections as TOML."""

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        raise TypeError(f"cannot write {v!r} as TOML")

    lines: list[str] = []
    sections: list[tuple[str, dict[str, Any]]] = []

    def emit(prefix: str, table: dict[str, Any]) -> None:
        for k, v in table.items():
            if isinstance(v, dict):
                sections.append((f"{prefix}{k}", v))
            else:
                lines.append(f"{k} = {scalar(v)}")

    emit("", data)
    while sections:
        name, table = sections.pop(0)
        lines.append(f"\n[{name}]")
        emit(name + ".", table)
    return "\n".join(lines) + "\n"

"""Training recipes: YAML files validated against the dataclasses below.

A recipe has the sections ``model``, ``data``, ``train``, ``eval``, ``sample``, ``checkpoint``
and ``log`` plus ``name``/``description``/``out``. Unknown keys and wrong types are errors that
name the file and the key. ``--set section.key=value`` overrides a key (the value is parsed as
YAML, so ``--set train.lr=1e-3`` and ``--set train.betas=[0.9,0.95]`` work).

``model`` holds any field of the model config (:mod:`matmulfree.config`) plus ``preset`` and
``architecture`` (:data:`MODEL_KEYS`); ``vocab_size`` defaults to the tokenizer's.

Every key carries a one-line description (``doc_field``); the recipe reference of the
documentation site is generated from these dataclasses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import CONFIG_CLASSES, PRESETS, ConfigError, _BaseConfig, check_type, config_from_dict, doc_field

SCHEDULES = ("cosine", "cosine-halved", "two-stage", "constant")
PRECISIONS = ("no", "bf16", "fp16")
#: ``distributed.strategy`` values (:mod:`matmulfree.distributed` implements them).
STRATEGIES = ("ddp", "fsdp", "deepspeed")

#: The default data source: the Shakespeare corpus (``docs/design.md``, "Data").
DEFAULT_SOURCE = "shakespeare"


@dataclass
class DataSection:
    """Where tokens come from. ``source``/``validation_source``: see :mod:`matmulfree.data.corpora`."""

    source: str = doc_field(DEFAULT_SOURCE, "training text: shakespeare[:folio|:all], text:PATH, jsonl:PATH[:FIELD], "
                            "parquet:PATH[:FIELD] or hf:NAME[:CONFIG][:SPLIT] (PATH may be a glob)")
    validation_source: str | None = doc_field(
        None, "a separate validation source (its train split is read); null: the validation split of source")
    tokenizer: str = doc_field("bytes", "bytes (256 ids), bpe:N (trained on the training split) or hf:NAME")
    seq_len: int = doc_field(256, "tokens per training sequence")
    streaming: bool = doc_field(False, "stream an hf: dataset instead of downloading it (tokenizes only what is read)")
    max_train_tokens: int | None = doc_field(None, "cap on the tokenized training tokens (null: the whole split)")
    max_validation_tokens: int | None = doc_field(1_000_000, "cap on the tokenized validation tokens (null: all)")
    num_proc: int | None = doc_field(
        None, "processes tokenizing an in-memory corpus (datasets.map num_proc; null: one); cached once per machine")
    validation_fraction: float = doc_field(
        0.05, "share of the documents of a text:/jsonl:/parquet: source held out for validation (the last ones)")


@dataclass
class TrainSection:
    """Optimisation. ``batch_size`` is sequences per micro-batch per process; the global batch is
    ``batch_size × grad_accum × processes`` sequences."""

    steps: int = doc_field(1000, "optimizer steps")
    batch_size: int = doc_field(16, "sequences per micro-batch per process")
    grad_accum: int = doc_field(1, "micro-batches accumulated into one optimizer step")
    lr: float = doc_field(3e-3, "peak learning rate (AdamW)")
    min_lr_ratio: float = doc_field(0.1, "final learning rate as a fraction of lr (the decaying schedules)")
    warmup_steps: int = doc_field(100, "steps of linear warm-up from lr / warmup_steps to lr")
    schedule: str = doc_field("cosine", "cosine, cosine-halved (LR halved midway), two-stage (BitNet b1.58), constant")
    weight_decay: float = doc_field(0.1, "AdamW weight decay on matrices (norm gains and other vectors get none)")
    betas: list[float] = doc_field([0.9, 0.95], "AdamW (β1, β2)")
    eps: float = doc_field(1e-8, "AdamW ε (denominator guard)")
    grad_clip: float | None = doc_field(1.0, "clip the global gradient norm to this (null: no clipping)")
    mixed_precision: str = doc_field("no", "no, bf16 or fp16 autocast (accelerate)")
    seed: int = doc_field(1337, "seed of initialisation, data order and samples")
    threads: int | None = doc_field(None, "torch CPU threads (null: torch's default)")
    compile: bool = doc_field(False, "train through torch.compile (needs a C++ compiler on CPU, Triton on GPU; "
                              "the run stops with a message naming what is missing)")


@dataclass
class EvalSection:
    """Validation during training (the first ``batches × batch_size`` validation sequences)."""

    every: int = doc_field(250, "steps between evaluations (0: only at the end)")
    batches: int = doc_field(20, "validation batches per evaluation")
    batch_size: int = doc_field(16, "sequences per validation batch")


@dataclass
class SampleSection:
    """Text samples written to ``samples.txt`` (and TensorBoard) during training."""

    every: int = doc_field(500, "steps between text samples (0: only at the end)")
    prompts: list[str] = doc_field(["\n"], "prompts to continue, one sample each")
    max_new_tokens: int = doc_field(200, "tokens generated per sample")
    temperature: float = doc_field(0.8, "sampling temperature (0: greedy)")
    top_k: int | None = doc_field(40, "sample among the k likeliest tokens (null: all)")


@dataclass
class CheckpointSection:
    """Resumable training checkpoints under ``checkpoints/step-N/``."""

    every: int = doc_field(500, "steps between checkpoints (0: only at the end; the last step always writes one)")
    keep: int = doc_field(2, "step checkpoints kept (older ones are deleted)")


@dataclass
class LogSection:
    """``log.csv``, TensorBoard and the terminal."""

    every: int = doc_field(10, "steps between rows of log.csv, TensorBoard scalars and, off a terminal, "
                           "the plain progress lines (step, loss, lr, tokens/s, ETA)")
    tensorboard: bool = doc_field(True, "write TensorBoard event files under tensorboard/")
    progress: bool = doc_field(True, "show a progress bar when the output is a terminal (in a pipe or file, "
                               "plain lines every log.every steps instead)")


@dataclass
class DistributedSection:
    """How several processes share the model (see :mod:`matmulfree.distributed` and docs/distributed.md);
    the launcher (accelerate, torchrun, SLURM) only decides how many processes there are."""

    strategy: str = doc_field("ddp", "ddp (replicated model; also one process), fsdp (FSDP2, sharded weights, "
                              "gradients and optimizer state) or deepspeed (DeepSpeed ZeRO)")
    reshard_after_forward: bool = doc_field(
        True, "fsdp: free the gathered weights after each block's forward (false: keep them until backward, "
        "more memory, less communication)")
    zero_stage: int = doc_field(2, "deepspeed: ZeRO stage (2 shards gradients and optimizer state)")
    bucket_mb: float = doc_field(200.0, "deepspeed: all-gather and reduce bucket size in MB (RWKV's ds_bucket_mb)")


SECTIONS = {"data": DataSection, "train": TrainSection, "eval": EvalSection, "sample": SampleSection,
            "checkpoint": CheckpointSection, "log": LogSection, "distributed": DistributedSection}
#: The keys a recipe file may hold at its top level.
TOP_LEVEL_KEYS = ("name", "description", "out", "model", *SECTIONS)


#: ``model.architecture`` when a recipe leaves it out.
DEFAULT_ARCHITECTURE = "matmulfree"
#: Keys of the ``model`` section besides the model config's fields, with their descriptions.
MODEL_KEYS = {
    "architecture": "which model: " + ", ".join(sorted(CONFIG_CLASSES)),
    "preset": "start from a named shape (" + ", ".join(PRESETS) + "); keys given beside it override it",
}


@dataclass
class Recipe:
    """A validated recipe: the top-level keys and one object per section."""

    name: str = doc_field(doc="run name (default: the file name without .yaml); the run folder is runs/<name>")
    model: dict[str, Any] = doc_field(doc="the model: architecture, preset and any model config field")
    data: DataSection = doc_field(doc="where tokens come from")
    train: TrainSection = doc_field(doc="optimisation")
    eval: EvalSection = doc_field(doc="validation during training")
    sample: SampleSection = doc_field(doc="text samples during training")
    checkpoint: CheckpointSection = doc_field(doc="resumable checkpoints")
    log: LogSection = doc_field(doc="logging")
    distributed: DistributedSection = doc_field(doc="how several processes share the model")
    description: str = doc_field("", "one line saying what the recipe trains")
    out: str | None = doc_field(None, "run folder (null: runs/<name>; --out overrides)")
    source: str = doc_field("recipe", "where the recipe was loaded from, for error messages (set by the loader)")

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k != "source"}
        return d

    def model_config(self, vocab_size: int) -> _BaseConfig:
        """The model config; ``vocab_size`` (the tokenizer's) fills the field when absent."""
        fields = dict(self.model)
        arch = fields.pop("architecture", DEFAULT_ARCHITECTURE)
        name = fields.pop("preset", None)
        base = dict(PRESETS[name]) if name else {}
        if arch == "transformer" and "n_heads" not in fields and "n_heads" not in base:
            base["n_heads"] = max(1, fields.get("d_model", base.get("d_model", 256)) // 64)
        merged = {**base, **fields}
        if "vocab_size" in fields and fields["vocab_size"] < vocab_size:
            raise ConfigError(f"{self.source}: model.vocab_size={fields['vocab_size']} is smaller than the "
                              f"tokenizer's vocabulary ({vocab_size})")
        if "vocab_size" not in fields:
            merged["vocab_size"] = vocab_size
        return config_from_dict({"architecture": arch, **merged}, f"{self.source}: model")


def _section(cls, data: Any, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    values = {k: check_type(where, k, v, str(known[k].type)) for k, v in data.items()}
    return cls(**values)


def _check_model(model: Any, where: str) -> dict[str, Any]:
    if model is None:
        model = {}
    if not isinstance(model, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(model).__name__}")
    arch = model.get("architecture", DEFAULT_ARCHITECTURE)
    if arch not in CONFIG_CLASSES:
        raise ConfigError(f"{where}.architecture: unknown value {arch!r}; expected one of {sorted(CONFIG_CLASSES)}")
    if "preset" in model and model["preset"] not in PRESETS:
        raise ConfigError(f"{where}.preset: unknown preset {model['preset']!r}; expected one of {sorted(PRESETS)}")
    known = {f.name for f in dataclasses.fields(CONFIG_CLASSES[arch])} | {"architecture", "preset"}
    unknown = sorted(set(model) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} for architecture {arch!r}; known: {sorted(known)}")
    return dict(model)


def recipe_from_dict(data: dict[str, Any], source: str = "recipe") -> Recipe:
    """Validate a recipe mapping (errors name ``source`` and the key)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe must be a mapping of sections")
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; known: {sorted(TOP_LEVEL_KEYS)}")
    sections = {k: _section(cls, data.get(k), f"{source}: {k}") for k, cls in SECTIONS.items()}
    r = Recipe(
        name=check_type(source, "name", data.get("name", Path(source).stem), "str"),
        description=check_type(source, "description", data.get("description", ""), "str"),
        out=check_type(source, "out", data.get("out"), "str | None"),
        model=_check_model(data.get("model"), f"{source}: model"),
        source=source,
        **sections,
    )
    _check_values(r)
    return r


def _check_values(r: Recipe) -> None:
    def need(cond: bool, key: str, value: Any, what: str) -> None:
        if not cond:
            raise ConfigError(f"{r.source}: {key}={value!r} {what}")

    t = r.train
    need(t.schedule in SCHEDULES, "train.schedule", t.schedule, f"is not one of {SCHEDULES}")
    need(t.mixed_precision in PRECISIONS, "train.mixed_precision", t.mixed_precision, f"is not one of {PRECISIONS}")
    for key in ("steps", "batch_size", "grad_accum"):
        need(getattr(t, key) > 0, f"train.{key}", getattr(t, key), "must be positive")
    need(t.lr > 0, "train.lr", t.lr, "must be positive")
    need(0 <= t.warmup_steps < t.steps, "train.warmup_steps", t.warmup_steps, f"must be in [0, train.steps={t.steps})")
    need(len(t.betas) == 2 and all(0 <= b < 1 for b in t.betas), "train.betas", t.betas, "must be two values in [0, 1)")
    need(0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", t.min_lr_ratio, "must be in [0, 1]")
    need(r.data.seq_len > 0, "data.seq_len", r.data.seq_len, "must be positive")
    fraction = r.data.validation_fraction
    need(0 < fraction < 1, "data.validation_fraction", fraction, "must be in (0, 1)")
    need(r.checkpoint.keep >= 1, "checkpoint.keep", r.checkpoint.keep, "must be at least 1")
    for key in ("eval.every", "sample.every", "checkpoint.every"):
        sec, name = key.split(".")
        need(getattr(getattr(r, sec), name) >= 0, key, getattr(getattr(r, sec), name), "must be >= 0")
    need(r.log.every > 0, "log.every", r.log.every, "must be positive")
    need(t.eps > 0, "train.eps", t.eps, "must be positive")
    d = r.distributed
    need(d.strategy in STRATEGIES, "distributed.strategy", d.strategy, f"is not one of {STRATEGIES}")
    need(d.zero_stage in (1, 2, 3), "distributed.zero_stage", d.zero_stage, "must be 1, 2 or 3")
    need(d.bucket_mb > 0, "distributed.bucket_mb", d.bucket_mb, "must be positive")


def recipe_dir() -> Path:
    """The folder of the recipes shipped with the package (``recipes/``, installed as ``matmulfree.recipes``)."""
    import matmulfree.recipes as pkg

    return Path(pkg.__file__).parent


def find_recipe(name_or_path: str) -> Path:
    """A recipe file by path, or by name among the shipped recipes (``shakespeare-tiny``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (recipe_dir() / name_or_path, recipe_dir() / f"{name_or_path}.yaml"):
        if candidate.is_file():
            return candidate
    names = sorted(p.stem for p in recipe_dir().glob("*.yaml"))
    raise ConfigError(f"recipe {name_or_path!r} not found (not a file, not one of {names})")


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a raw recipe mapping."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        value = yaml.safe_load(raw) if raw.strip() else None
        parts = key.split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p!r} in {source} is not a section")
        node[parts[-1]] = value
    return data


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    """Load, override and validate a recipe."""
    path = find_recipe(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    data = apply_overrides(data, overrides or [], str(path))
    return recipe_from_dict(data, str(path))

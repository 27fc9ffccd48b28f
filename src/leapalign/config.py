"""Training configuration: dataclasses (every field has a default and a help string), YAML files, `key=value` overrides.

A YAML file mirrors the dataclasses: top-level run fields plus the sections `model`, `reward`, `method`, `optim`,
`data` and `eval`. Overrides use dotted keys (`optim.lr=5e-6`, `method.args.alpha=0.1`); the value is parsed as
YAML (`none`/`null` -> None, `[0.9, 0.99]` -> a list). Unknown keys and ill-typed values raise ValueError naming
the key and the valid choices, so that the CLI can print one line.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


def _f(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class ModelConfig:
    adapter: str = _f("shapes", "model family: flux, sd3, shapes, or 'package.module:function' returning a FlowAdapter")
    path: str | None = _f(None, "hub id or local directory of the base model (None = the adapter's default)")
    dtype: str = _f("float32", "weight dtype of the loaded model: float32 or bfloat16 (bfloat16 = frozen base for LoRA)")
    height: int = _f(32, "image height in pixels for rollouts (Flux/SD3: divisible by 16)")
    width: int = _f(32, "image width in pixels for rollouts (Flux/SD3: divisible by 16)")
    num_steps: int = _f(25, "Euler steps T of the training rollout")
    guidance_scale: float | None = _f(None, "Flux guidance / SD3 CFG scale (None = the adapter's default)")
    lora_rank: int = _f(0, "LoRA rank on the transformer; 0 = full fine-tuning of the transformer")
    lora_alpha: float | None = _f(None, "LoRA scaling alpha (None = equal to the rank)")
    lora_targets: str = _f("default", "LoRA target preset of adapters/lora.py: attn, default or all")
    gradient_checkpointing: bool = _f(False, "recompute transformer activations in backward (less memory, ~30% slower)")
    embedding_cache: str | None = _f(None, "directory of precomputed prompt embeddings (flux/sd3): missing or "
                                           "stale entries are encoded once, then the text encoders are freed")
    inference_rollout: bool = _f(True, "run the no-grad rollout under torch.inference_mode (faster; turn off for a "
                                       "model that caches tensors lazily inside forward)")


@dataclass
class RewardConfig:
    name: str = _f("shapes", "reward: hpsv2, hpsv21, pickscore, clip, aesthetic, imagereward, shapes, shapes-compose, or 'pkg.mod:fn'")
    path: str | None = _f(None, "reward weights file/directory (None = the reward's default location)")
    terms: list = _f([], "composite reward: a list of {name, weight, mean, std, hinge, path} mappings; the total is "
                         "sum weight * (min(r, hinge) - mean) / std and each raw r is logged; when set, name/path "
                         "are ignored")


@dataclass
class MethodConfig:
    name: str = _f("leapalign", "training method: leapalign, refl, draft, draft_lv, drtune, full")
    args: dict = _f({}, "the method's hyperparameters (fields of its config dataclass, e.g. alpha, tau, hinge)")


@dataclass
class OptimConfig:
    lr: float = _f(1e-5, "AdamW learning rate (after warmup), per optimizer step")
    betas: list = _f([0.9, 0.999], "AdamW (beta1, beta2)")
    weight_decay: float = _f(1e-4, "AdamW decoupled weight decay")
    eps: float = _f(1e-8, "AdamW epsilon")
    max_grad_norm: float = _f(1.0, "clip the global gradient L2 norm to this value; 0 = no clipping")
    warmup_steps: int = _f(0, "linear learning-rate warmup, in optimizer steps (then constant)")


@dataclass
class DataConfig:
    prompts: str = _f("shapes:train", "training prompts: a .txt file (one per line), a .jsonl file ({'prompt': ...} "
                                      "per line), or shapes:train / shapes:eval")
    shuffle: bool = _f(True, "reshuffle the prompts every epoch (deterministically from seed and epoch)")


@dataclass
class EvalConfig:
    prompts: str | None = _f("shapes:eval", "evaluation prompts (same formats as data.prompts); None = no evaluation")
    every: int = _f(0, "evaluate every N iterations (0 = only at the end); EMA weights are used when ema_decay > 0")
    num_prompts: int = _f(32, "evaluate on the first N prompts of the file (0 = all)")
    num_steps: int = _f(25, "Euler steps for evaluation sampling (paper: 50 for Flux)")
    seed: int = _f(0, "noise seed of evaluation sample i is (seed, i): the same images for every checkpoint")
    batch_size: int = _f(8, "images per sampling batch during evaluation")
    geneval: bool = _f(True, "also score ShapesWorld prompts with the GenEval-like evaluator (shapes adapter only)")


@dataclass
class TrainConfig:
    output_dir: str = _f("runs/leapalign", "directory for checkpoints, logs, metrics.jsonl, samples and final weights")
    iterations: int = _f(300, "optimizer steps to train for")
    batch_size: int = _f(1, "prompts per micro-batch per process; effective batch = batch_size x grad_accum x world size")
    grad_accum: int = _f(1, "micro-batches accumulated per optimizer step")
    mixed_precision: str = _f("no", "no or bf16 (autocast for transformer calls; master weights stay in model.dtype)")
    seed: int = _f(0, "seed for data order, rollout noise and the methods' random choices")
    ema_decay: float = _f(0.995, "EMA of trainable weights after every step (0 = no EMA); used for evaluation")
    log_every: int = _f(1, "write metrics every N iterations")
    save_every: int = _f(50, "checkpoint every N iterations (0 = only at the end)")
    keep_checkpoints: int = _f(3, "keep at most this many checkpoints, deleting the oldest (0 = keep all)")
    resume: str = _f("auto", "auto (newest valid checkpoint in output_dir, if any), none, or a checkpoint directory")
    max_consecutive_skips: int = _f(5, "abort after this many consecutive steps with non-finite loss or gradient")
    logger: str = _f("tensorboard", "tensorboard, wandb or none (metrics.jsonl is always written)")
    cudnn_sdp: bool = _f(False, "allow cuDNN scaled-dot-product attention on CUDA (SPEC 10: off, it gave NaN grads)")
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "the model being trained"})
    reward: RewardConfig = field(default_factory=RewardConfig, metadata={"help": "the differentiable reward"})
    method: MethodConfig = field(default_factory=MethodConfig, metadata={"help": "the training method"})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "optimizer and scheduler"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "training prompts"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "periodic and final evaluation"})


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is not type(None):
                return _coerce(value, option, key)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # PyYAML reads 1e-5 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is list and isinstance(value, tuple):
        return list(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{key} must be a mapping of its fields, got {value!r}")
        return _build(tp, value, key + ".")
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ValueError(f"{key} must be {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"unknown config key {prefix}{unknown[0]}; valid keys here: {', '.join(names)}")
    return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in data.items()})


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: dict) -> TrainConfig:
    if not isinstance(data, dict):
        raise ValueError(f"a config must be a mapping of keys, got {type(data).__name__}")
    return _build(TrainConfig, data)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set dotted `key=value` pairs in a nested dict (values parsed as YAML)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key=value, e.g. optim.lr=5e-6")
        try:
            value = None if raw.lower() == "none" else yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Defaults <- YAML file <- overrides, then validate()."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            line = getattr(getattr(err, "problem_mark", None), "line", None)
            where = f" (line {line + 1})" if line is not None else ""
            raise ValueError(f"malformed YAML in {p}{where}: {getattr(err, 'problem', err)}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{p} must hold a mapping of config keys, got {type(data).__name__}")
    cfg = from_dict(apply_overrides(data, list(overrides)))
    validate(cfg)
    return cfg


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def validate(cfg: TrainConfig) -> None:
    """Raise ValueError with what to change; also builds the method config so that its fields are checked."""
    _check(cfg.iterations >= 1, f"iterations must be >= 1, got {cfg.iterations}")
    _check(cfg.batch_size >= 1, f"batch_size must be >= 1 (prompts per process), got {cfg.batch_size}")
    _check(cfg.grad_accum >= 1, f"grad_accum must be >= 1, got {cfg.grad_accum}")
    _check(cfg.mixed_precision in ("no", "bf16"), f"mixed_precision must be no or bf16, got {cfg.mixed_precision!r}")
    _check(0 <= cfg.ema_decay < 1, f"ema_decay must be in [0, 1) (0 = no EMA), got {cfg.ema_decay}")
    for name in ("log_every",):
        _check(getattr(cfg, name) >= 1, f"{name} must be >= 1, got {getattr(cfg, name)}")
    for name in ("save_every", "keep_checkpoints"):
        _check(getattr(cfg, name) >= 0, f"{name} must be >= 0, got {getattr(cfg, name)}")
    _check(cfg.max_consecutive_skips >= 1, f"max_consecutive_skips must be >= 1, got {cfg.max_consecutive_skips}")
    _check(cfg.logger in ("tensorboard", "wandb", "none"), f"logger must be tensorboard, wandb or none, got {cfg.logger!r}")
    _check(cfg.resume in ("auto", "none") or Path(cfg.resume).is_dir(),
           f"resume must be auto, none or an existing checkpoint directory, got {cfg.resume!r}")
    m = cfg.model
    _check(m.dtype in ("float32", "bfloat16"), f"model.dtype must be float32 or bfloat16, got {m.dtype!r}")
    _check(m.height >= 1 and m.width >= 1, f"model.height and model.width must be >= 1, got {m.height}x{m.width}")
    _check(m.num_steps >= 2, f"model.num_steps must be >= 2 Euler steps, got {m.num_steps}")
    _check(m.lora_rank >= 0, f"model.lora_rank must be >= 0 (0 = full fine-tuning), got {m.lora_rank}")
    _check(m.dtype == "float32" or m.lora_rank > 0,
           "model.dtype=bfloat16 needs LoRA (model.lora_rank > 0): full fine-tuning keeps fp32 master weights")
    o = cfg.optim
    _check(o.lr > 0, f"optim.lr must be > 0, got {o.lr}")
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), f"optim.betas must be two numbers in [0, 1), got {o.betas}")
    _check(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    _check(o.max_grad_norm >= 0, f"optim.max_grad_norm must be >= 0 (0 = no clipping), got {o.max_grad_norm}")
    _check(o.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {o.warmup_steps}")
    e = cfg.eval
    _check(e.every >= 0 and e.num_prompts >= 0, "eval.every and eval.num_prompts must be >= 0")
    _check(e.num_steps >= 1 and e.batch_size >= 1, "eval.num_steps and eval.batch_size must be >= 1")
    composite_terms(cfg)
    method_config(cfg)


def composite_terms(cfg: TrainConfig) -> list:
    """reward.terms as validated CompositeTerm records (empty list = a single reward by name)."""
    from leapalign.rewards.composite import CompositeTerm

    terms = []
    for i, item in enumerate(cfg.reward.terms):
        _check(isinstance(item, dict) and "name" in item,
               f"reward.terms[{i}] must be a mapping with at least a name, e.g. {{name: hpsv21, weight: 1.0}}")
        try:
            terms.append(CompositeTerm(**item))
        except TypeError:
            raise ValueError(f"reward.terms[{i}] has an unknown key; allowed: name, weight, mean, std, hinge, "
                             f"path") from None
    return terms


def method_config(cfg: TrainConfig) -> Any:
    """The method's own validated config dataclass, built from method.args."""
    from leapalign.methods import get_method

    method = get_method(cfg.method.name)
    try:
        return method.config(**cfg.method.args)
    except TypeError as err:  # an unknown field name: say which ones exist
        valid = ", ".join(f.name for f in dataclasses.fields(method.config))
        raise ValueError(f"method.args for {cfg.method.name}: {err}; valid fields: {valid}") from None


def describe(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    """One line per field: dotted key, default and help (for `leapalign train --help-config`)."""
    lines = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type) or (isinstance(f.type, str) and f.name in
                                                 ("model", "reward", "method", "optim", "data", "eval")):
            lines += describe(typing.get_type_hints(cls)[f.name], prefix + f.name + ".")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"{prefix}{f.name} = {default!r}: {f.metadata['help']}")
    return lines

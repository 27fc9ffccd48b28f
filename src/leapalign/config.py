"""Training configuration: dataclasses (every field has a default and a help string), YAML files, `key=value` overrides.

A YAML file mirrors the dataclasses: top-level run fields plus the sections `model`, `reward`, `method`, `optim`,
`data` and `eval`. Overrides use dotted keys (`optim.lr=5e-6`, `method.args.alpha=0.1`); the value is parsed as
YAML (`none`/`null` -> None, `[0.9, 0.99]` -> a list); a str field that must not be None (`logger`, `resume`, ...)
reads None as the string 'none', so `logger=none` means the documented choice and validation decides whether
'none' is valid there. YAML 1.1 reads yes/no/on/off/true/false as booleans, in files and overrides alike; files
and overrides are read keeping each such word, so a str field gets back the word as written (`mixed_precision:
no` is 'no', accelerate's value) and a bool field gets the boolean. Unknown keys, ill-typed and non-finite values
raise ValueError naming the key and the valid choices, so that the CLI can print one line.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from leapalign.types import option


@dataclass
class ModelConfig:
    adapter: str = option("shapes", "model family: flux, sd3, shapes, or 'package.module:function' returning a FlowAdapter")
    path: str | None = option(None, "hub id or local directory of the base model (None = the adapter's default)")
    dtype: str = option("float32", "weight dtype of the loaded model: float32 or bfloat16 (bfloat16 = frozen base for LoRA)")
    height: int = option(32, "image height in pixels for rollouts (Flux/SD3: divisible by 16)")
    width: int = option(32, "image width in pixels for rollouts (Flux/SD3: divisible by 16)")
    num_steps: int = option(25, "Euler steps T of the training rollout")
    guidance_scale: float | None = option(None, "Flux guidance / SD3 CFG scale (None = the adapter's default)")
    lora_rank: int = option(0, "LoRA rank on the transformer; 0 = full fine-tuning of the transformer")
    lora_alpha: float | None = option(None, "LoRA scaling alpha (None = equal to the rank)")
    lora_targets: str = option("default", "LoRA target preset of adapters/lora.py: attn, default or all")
    gradient_checkpointing: bool = option(False, "recompute transformer activations in backward (less memory, ~30% slower)")
    embedding_cache: str | None = option(None, "directory of precomputed prompt embeddings (flux/sd3): missing or "
                                           "stale entries are encoded once, then the text encoders are freed")
    inference_rollout: bool = option(True, "run the no-grad rollout under torch.inference_mode (faster; turn off for a "
                                       "model that caches tensors lazily inside forward)")
    rollout_path: str = option("auto", "no-grad rollout path (fast_rollout.py): auto (merged for an unsharded LoRA without "
                                       "dropout, else plain), plain, merged (LoRA merged into copies of the touched "
                                       "weights), compiled (torch.compile), merged_compiled; FSDP always runs plain")
    rollout_compile_backend: str = option("inductor", "torch.compile backend of the compiled paths (inductor needs a C "
                                                      "compiler on CPU; aot_eager: no codegen)")
    rollout_compile_mode: str | None = option(None, "torch.compile mode of the compiled paths, e.g. reduce-overhead "
                                                    "(CUDA graphs) or max-autotune; None = default")
    rollout_dtype: str | None = option(None, "opt-in lower-precision rollout: bfloat16 or float16 autocast for the "
                                             "no-grad calls only (the leaps keep the training precision); None = off")


@dataclass
class RewardConfig:
    name: str = option("shapes", "reward: hpsv2, hpsv21, pickscore, clip, aesthetic, imagereward, detector, shapes, "
                                 "shapes-compose, or 'pkg.mod:fn'")
    path: str | None = option(None, "reward weights file/directory (None = the reward's default location)")
    terms: list = option([], "composite reward: a list of {name, weight, mean, std, hinge, path} mappings; the total is "
                         "sum weight * (min(r, hinge) - mean) / std and each raw r is logged; when set, name/path "
                         "are ignored")


@dataclass
class MethodConfig:
    name: str = option("leapalign", "training method: leapalign, refl, draft, draft_lv, drtune, full, flow_grpo, "
                                    "mix_grpo")
    args: dict = option({}, "the method's hyperparameters (fields of its config dataclass, e.g. alpha, tau, hinge)")


@dataclass
class OptimConfig:
    lr: float = option(1e-5, "AdamW learning rate (after warmup), per optimizer step")
    betas: list = option([0.9, 0.999], "AdamW (beta1, beta2)")
    weight_decay: float = option(1e-4, "AdamW decoupled weight decay")
    eps: float = option(1e-8, "AdamW epsilon")
    max_grad_norm: float = option(1.0, "clip the global gradient L2 norm to this value; 0 = no clipping")
    warmup_steps: int = option(0, "linear learning-rate warmup, in optimizer steps (then constant)")


@dataclass
class DataConfig:
    prompts: str = option("shapes:train", "training prompts: a .txt file (one per line), a .jsonl file ({'prompt': ...} "
                                      "per line), or shapes:train / shapes:eval")
    shuffle: bool = option(True, "reshuffle the prompts every epoch (deterministically from seed and epoch)")


@dataclass
class EvalConfig:
    prompts: str | None = option("shapes:eval", "evaluation prompts (same formats as data.prompts); None = no evaluation")
    every: int = option(0, "evaluate every N iterations (0 = only at the end); EMA weights are used when ema_decay > 0")
    num_prompts: int = option(32, "evaluate on the first N prompts of the file (0 = all)")
    num_steps: int = option(25, "Euler steps for evaluation sampling (paper: 50 for Flux)")
    seed: int = option(0, "noise seed of evaluation sample i is (seed, i): the same images for every checkpoint")
    batch_size: int = option(8, "images per sampling batch during evaluation")
    geneval: bool = option(True, "also score ShapesWorld prompts with the GenEval-like evaluator (shapes adapter only)")


@dataclass
class TrainConfig:
    output_dir: str = option("runs/leapalign", "directory for checkpoints, logs, metrics.jsonl, samples and final weights")
    iterations: int = option(300, "optimizer steps to train for")
    batch_size: int = option(1, "prompts per micro-batch per process; effective batch = batch_size x grad_accum x world size")
    grad_accum: int = option(1, "micro-batches accumulated per optimizer step")
    mixed_precision: str = option("no", "no or bf16 (autocast for transformer calls; master weights stay in model.dtype)")
    seed: int = option(0, "seed for data order, rollout noise and the methods' random choices")
    ema_decay: float = option(0.995, "EMA of trainable weights after every step (0 = no EMA); used for evaluation")
    log_every: int = option(1, "write metrics every N iterations")
    save_every: int = option(50, "checkpoint every N iterations (0 = only at the end)")
    keep_checkpoints: int = option(3, "keep at most this many checkpoints, deleting the oldest (0 = keep all)")
    resume: str = option("auto", "auto (newest valid checkpoint in output_dir, if any), none (start fresh), force (as auto, "
                                 "but continue even when settings that change what is trained differ from the "
                                 "checkpoint's), or a checkpoint directory")
    max_consecutive_skips: int = option(5, "abort after this many consecutive steps with non-finite loss or gradient")
    logger: str = option("tensorboard", "tensorboard, wandb or none (metrics.jsonl is always written)")
    threads: int = option(0, "CPU threads of torch (torch.set_num_threads); 0 = torch's default (one per core). 1 was "
                             "3-12x faster on a loaded 2-core machine (docs/training.md)")
    cudnn_sdp: bool = option(False, "allow cuDNN scaled-dot-product attention on CUDA (off: it gave NaN LoRA grads on an H100, docs/models.md)")
    model: ModelConfig = option(ModelConfig(), "the model being trained")
    reward: RewardConfig = option(RewardConfig(), "the differentiable reward")
    method: MethodConfig = option(MethodConfig(), "the training method")
    optim: OptimConfig = option(OptimConfig(), "optimizer and scheduler")
    data: DataConfig = option(DataConfig(), "training prompts")
    eval: EvalConfig = option(EvalConfig(), "periodic and final evaluation")


@dataclass(frozen=True)
class YamlBool:
    """A YAML 1.1 boolean as read: the boolean and the word that spelled it (no, Off, TRUE, ...)."""

    value: bool
    word: str

    def __repr__(self) -> str:
        return self.word


class _WordLoader(yaml.SafeLoader):
    """yaml.SafeLoader that reads booleans as YamlBool, so that a str field can take the word back."""


_WordLoader.add_constructor("tag:yaml.org,2002:bool",
                            lambda loader, node: YamlBool(loader.construct_yaml_bool(node), node.value))


def read_yaml(text: str) -> Any:
    """yaml.safe_load, except that booleans come as YamlBool (see the module doc); raises yaml.YAMLError."""
    return yaml.load(text, Loader=_WordLoader)


def _plain(value: Any) -> Any:
    """value with every YamlBool, at any depth, replaced by its boolean (what yaml.safe_load would have given)."""
    if isinstance(value, YamlBool):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


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
    if tp is str and value is None:  # `key=none` on the command line: the documented choice 'none'
        return "none"
    if tp is str and isinstance(value, YamlBool):  # `mixed_precision: no` in YAML: the word as written
        return value.word
    if tp is str and isinstance(value, bool):  # not from YAML text: no, off and false are all False
        raise ValueError(f"{key} must be a string, got the boolean {value}: give the word meant as a string "
                         f"(no, off and false all read as False)")
    given = value  # error messages show what was written (a YamlBool prints its word)
    if not dataclasses.is_dataclass(tp):
        value = _plain(value)
    if tp is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:  # PyYAML reads 1e-5 (no dot) as a string
            number = float(value)
        except ValueError:
            number = None
        if number is not None:
            if not math.isfinite(number):
                raise ValueError(f"{key} must be a finite number, got {value!r}")
            return number
    if tp in (list, tuple) or typing.get_origin(tp) in (list, tuple):
        if isinstance(value, str):  # a command-line list: a,b,c (each item parsed as YAML)
            value = [_plain(_yaml_value(v)) for v in value.split(",") if v]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):  # seeds=0: a list of one
            value = [value]
        if isinstance(value, (list, tuple)):
            container = typing.get_origin(tp) or tp
            return container(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{key} must be a mapping of its fields, got {value!r}")
        return _build(tp, value, key + ".")
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ValueError(f"{key} must be {_type_name(tp)}, got {given!r}")
    return value


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"unknown config key {prefix}{unknown[0]}; valid keys here: {', '.join(names)}")
    return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in data.items()})


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def config_yaml(cfg: Any) -> str:
    """The config as YAML (what `final/config.yaml` and `--print-config` hold)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def build(cls: type, data: dict) -> Any:
    """A config dataclass from a nested mapping, every value checked against its annotation."""
    if not isinstance(data, dict):
        raise ValueError(f"a config must be a mapping of keys, got {type(data).__name__}")
    return _build(cls, data)


def from_dict(data: dict) -> TrainConfig:
    return build(TrainConfig, data)


def parse_overrides(cls: type, overrides: list[str], base: dict | None = None) -> Any:
    """cls built from `base` (a partial mapping, e.g. a preset) with dotted `key=value` overrides on top: the one
    override parser of `train`, `demo` and `shapes pretrain|reward`."""
    return build(cls, apply_overrides(dict(base or {}), list(overrides)))


def _yaml_value(raw: str) -> Any:
    if raw.lower() == "none":
        return None
    try:
        value = read_yaml(raw) if raw else ""
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):  # YAML reads 1e-5, inf and nan as strings; in free-form method.args too they are numbers
        try:
            return float(value)
        except ValueError:
            pass
    return value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set dotted `key=value` pairs in a nested dict (values parsed as YAML)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key=value, e.g. optim.lr=5e-6")
        value = _yaml_value(raw)
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
        if p.is_dir():
            raise ValueError(f"--config {p} is a directory; give a YAML file, e.g. configs/shapes.yaml")
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        try:
            data = read_yaml(p.read_text()) or {}
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
    bad = _non_finite(to_dict(cfg))
    _check(bad is None, f"{bad} must be a finite number (inf and nan would make every weight non-finite)")
    _check(cfg.iterations >= 1, f"iterations must be >= 1, got {cfg.iterations}")
    _check(cfg.batch_size >= 1, f"batch_size must be >= 1 (prompts per process), got {cfg.batch_size}")
    _check(cfg.grad_accum >= 1, f"grad_accum must be >= 1, got {cfg.grad_accum}")
    _check(cfg.mixed_precision in ("no", "bf16"), f"mixed_precision must be no or bf16, got {cfg.mixed_precision!r}")
    _check(0 <= cfg.ema_decay < 1, f"ema_decay must be in [0, 1) (0 = no EMA), got {cfg.ema_decay}")
    for name in ("log_every",):
        _check(getattr(cfg, name) >= 1, f"{name} must be >= 1, got {getattr(cfg, name)}")
    for name in ("save_every", "keep_checkpoints"):
        _check(getattr(cfg, name) >= 0, f"{name} must be >= 0, got {getattr(cfg, name)}")
    _check(cfg.threads >= 0, f"threads must be >= 0 (0 = torch's default), got {cfg.threads}")
    _check(cfg.max_consecutive_skips >= 1, f"max_consecutive_skips must be >= 1, got {cfg.max_consecutive_skips}")
    _check(cfg.logger in ("tensorboard", "wandb", "none"), f"logger must be tensorboard, wandb or none, got {cfg.logger!r}")
    _check(cfg.resume in ("auto", "none", "force") or Path(cfg.resume).is_dir(),
           f"resume must be auto, none, force or an existing checkpoint directory, got {cfg.resume!r}")
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


def _non_finite(data: Any, key: str = "") -> str | None:
    """The dotted key of the first inf/nan number anywhere in `data` (nested dicts and lists: method.args,
    reward.terms, optim.betas included), or None."""
    if isinstance(data, float) and not math.isfinite(data):
        return key
    if isinstance(data, dict):
        items = [(f"{key}.{k}" if key else str(k), v) for k, v in data.items()]
    elif isinstance(data, (list, tuple)):
        items = [(f"{key}[{i}]", v) for i, v in enumerate(data)]
    else:
        return None
    return next((bad for k, v in items if (bad := _non_finite(v, k)) is not None), None)


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


def describe(cls: type, prefix: str = "") -> list[str]:
    """One line per field of a config dataclass (nested ones flattened): dotted key, default and help
    (what `--list-keys` prints)."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            lines += describe(hints[f.name], prefix + f.name + ".")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"{prefix}{f.name} = {default!r}: {f.metadata['help']}")
    return lines


def describe_train(cfg: TrainConfig) -> list[str]:
    """describe(TrainConfig), plus the fields of the chosen method's config as method.args.<field>."""
    from leapalign.methods import get_method

    return describe(TrainConfig) + describe(get_method(cfg.method.name).config, "method.args.")

"""The training-run configuration: a flat, documented YAML schema with `key=value` overrides.

A run is described by one YAML file (train/configs/*.yaml) merged onto `DEFAULTS` below, then
command-line overrides `section.key=value` (values parsed as YAML, so `train.batch_size=4`,
`optim.betas=[0.9,0.99]`, `model.overrides.text.path=/bert`, `train.resume=null` all work).
The resolved config is written to `<output_dir>/config.yaml` and stored in every checkpoint under
"train_config".

Schema (every key, its default and meaning)::

    model:
      preset: tiny              # mabp.registry preset: paper | lite | tiny
      checkpoint: null          # initial weights from an MABP checkpoint (fine-tuning; NOT a resume)
      checkpoint_adapt: false   # true: the checkpoint may be another size of the architecture (e.g. the
                                # first lite); copy what fits, slice sampling points (train.warm_start)
      overrides: {}             # dotted MABPConfig keys, e.g. {text.path: /bert, visual.weights: swin.pth}
      disable_dropout: false    # set every nn.Dropout to p=0 (BERT's 0.1); for equivalence tests/debugging
    data:
      dataset: synthgres        # synthgres | grefcoco | refcoco | refcoco+ | refcocog
      root: null                # dataset folder (null: $MABP_DATASETS or ./datasets); unused by synthgres
      train_split: train
      val_split: val
      train_mode: train         # real datasets: "train" = one sample per ref, sentence drawn uniformly
      epoch_length: null        # samples per epoch (synthgres: the stream window; real: a cap); null = all
      size: null                # dataset-side resize/canvas; null = dataset default (collate squashes to S)
      num_workers: 0
      val_samples: null         # evaluate on the first N val expressions; null = the whole split
      kwargs: {}                # extra build_dataset keyword arguments (e.g. seed for synthgres)
    optim:
      lr: 2.0e-5
      weight_decay: 0.05        # 0 for norm layers, nn.Embedding and Swin relative_position_bias_table
      betas: [0.9, 0.999]
      eps: 1.0e-8
      clip_grad_norm: 0.01      # full-model L2 clip after AMP unscale; null or 0 = off
      freeze_bert_embeddings_and_last_layers: true   # the official quirk (official MABP: BERT embeddings and last two layers outside the optimizer)
      bert_frozen_last_layers: 2                     # how many top BERT layers the quirk freezes
      lr_multipliers: {}        # parameter-name prefix -> lr factor (longest matching prefix wins)
      freeze: []                # parameter-name prefixes kept fixed (requires_grad=False), e.g. backbone.backbone.
    schedule:
      max_steps: 1000
      constant_until: 0.625     # fraction of max_steps with constant lr, then cosine to lr_end
      lr_end: 1.8e-6
      warmup_steps: 0
      warmup_factor: 0.001      # linear warm-up starts at lr * warmup_factor
    train:
      batch_size: 2             # PER PROCESS; the total batch is batch_size x world_size
      eval_batch_size: null     # null = batch_size
      amp: auto                 # auto (fp16 on CUDA, off on CPU) | fp16 (CUDA) | bf16 (CUDA, or CPUs with
                                # native bf16) | off; the pixel decoder always runs in fp32
      visual_cache_mb: 1024     # one visual pass per image when the visual stages are frozen and
                                # language-free (lite): LRU of per-image maps, this many MB; 0 = off
      compile: false            # torch.compile the model (inductor); falls back to eager with a warning
      channels_last: false      # CUDA only: channels-last memory format for the convolutions
      device: auto              # auto | cpu | cuda
      seed: 0
      log_every: 10
      eval_every: 500           # steps between evaluations (and at the last step); 0 = never
      ckpt_every: 500           # steps between last.pt writes (and at the last step)
      output_dir: null          # null = runs/<config file name>
      resume: auto              # auto (resume <output_dir>/last.pt if present) | a path | null (fresh)
      max_nonfinite: 5          # stop after this many consecutive NaN/inf steps
      tensorboard: true         # log to TensorBoard too when it is installed
      num_threads: null         # torch intra-op threads per process (null = torch's default); on a
                                # shared CPU, 1 is often faster
      find_unused_parameters: false  # DDP: set true for ablations whose loss leaves some heads unused
                                     # (frozen BERT parts need not: they have requires_grad=False)
    loss: {}                    # LossConfig overrides (weights, pos_weight, ...); the supervised heads
                                # follow the model's decoder.main_supervision / nt_supervision
    eval:
      nt_rule: any              # first | last | any (mabp.postprocess.decide_no_target)
      threshold: 0.5
      min_pixels: 0
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import yaml

from mabp.config import LossConfig, MABPConfig
from mabp.registry import PRESETS, get_config

DEFAULTS: Dict[str, Any] = {
    "model": {"preset": "tiny", "checkpoint": None, "checkpoint_adapt": False, "overrides": {},
              "disable_dropout": False},
    "data": {"dataset": "synthgres", "root": None, "train_split": "train", "val_split": "val",
             "train_mode": "train", "epoch_length": None, "size": None, "num_workers": 0,
             "val_samples": None, "kwargs": {}},
    "optim": {"lr": 2.0e-5, "weight_decay": 0.05, "betas": [0.9, 0.999], "eps": 1.0e-8,
              "clip_grad_norm": 0.01, "freeze_bert_embeddings_and_last_layers": True,
              "bert_frozen_last_layers": 2, "lr_multipliers": {}, "freeze": []},
    "schedule": {"max_steps": 1000, "constant_until": 0.625, "lr_end": 1.8e-6, "warmup_steps": 0,
                 "warmup_factor": 0.001},
    "train": {"batch_size": 2, "eval_batch_size": None, "amp": "auto", "device": "auto", "seed": 0,
              "log_every": 10, "eval_every": 500, "ckpt_every": 500, "output_dir": None,
              "resume": "auto", "max_nonfinite": 5, "tensorboard": True, "num_threads": None,
              "visual_cache_mb": 1024, "compile": False, "channels_last": False,
              "find_unused_parameters": False},
    "loss": {},
    "eval": {"nt_rule": "any", "threshold": 0.5, "min_pixels": 0},
}

# Sections whose content is an open mapping (keys checked elsewhere, against MABPConfig/LossConfig).
OPEN_MAPPINGS = {("model", "overrides"), ("data", "kwargs"), ("optim", "lr_multipliers"), ("loss",)}


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float (YAML 1.1, PyYAML's dialect, wants `1.0e-4` and would
    otherwise hand back the string "1e-4" for a learning rate)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def yaml_load(text: Any) -> Any:
    """yaml.safe_load with `1e-4` read as a float."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


class ConfigError(ValueError):
    """A training config that cannot be used (unknown key, bad value)."""


def _merge(base: Dict[str, Any], update: Dict[str, Any], path: tuple = ()) -> None:
    """Recursively merge `update` into `base` in place, refusing keys the schema does not know.
    Open mappings (model.overrides, data.kwargs, optim.lr_multipliers, loss) are merged as they are."""
    for key, value in update.items():
        here = path + (key,)
        if key not in base:
            where = ".".join(path) or "top level"
            raise ConfigError(f"unknown config key {'.'.join(here)!r} ({where} knows: {sorted(base)})")
        if here in OPEN_MAPPINGS:
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise ConfigError(f"config key {'.'.join(here)!r} must be a mapping, got {value!r}")
            base[key].update(copy.deepcopy(value))
        elif isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {'.'.join(here)!r} must be a mapping, got {value!r}")
            _merge(base[key], value, here)
        else:
            base[key] = copy.deepcopy(value)


def _flatten(data: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """{"text": {"path": x}} -> {"text.path": x}: model.overrides may be written nested or dotted."""
    out: Dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, full + "."))
        else:
            out[full] = value
    return out


def parse_override(item: str) -> tuple:
    """'a.b.c=value' -> ("a.b.c", yaml-parsed value)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form section.key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from exc
    return key, value


def apply_override(cfg: Dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key. Inside open mappings (model.overrides, loss, ...) the rest of the key is kept
    whole, since MABPConfig keys are themselves dotted: model.overrides.text.path -> {"text.path": v}."""
    parts = key.split(".")
    for n in (1, 2):
        if tuple(parts[:n]) in OPEN_MAPPINGS and len(parts) > n:
            node = cfg
            for p in parts[:n]:
                node = node.setdefault(p, {})
            node[".".join(parts[n:])] = value
            return
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"unknown config section {'.'.join(parts[:i + 1])!r} in override {key!r}")
        node = node[part]
    if not isinstance(node, dict) or parts[-1] not in node:
        known = sorted(node) if isinstance(node, dict) else []
        raise ConfigError(f"unknown config key {key!r} (known here: {known})")
    node[parts[-1]] = value


def load_config(path: Optional[Union[str, os.PathLike]] = None, overrides: Sequence[str] = (),
                extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """DEFAULTS <- YAML file <- `extra` (a nested dict) <- `key=value` overrides; validated.

    The run folder defaults to runs/<config file stem> (runs/default without a file).
    """
    cfg = copy.deepcopy(DEFAULTS)
    name = "default"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training config not found: {path}")
        with open(path, encoding="utf-8") as f:
            try:
                data = yaml_load(f) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: invalid YAML ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        _merge(cfg, data)
        name = path.stem
    if extra:
        _merge(cfg, extra)
    for item in overrides:
        apply_override(cfg, *parse_override(item))
    if cfg["train"]["output_dir"] is None:
        cfg["train"]["output_dir"] = str(Path("runs") / name)
    validate(cfg)
    return cfg


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(cfg: Dict[str, Any]) -> None:
    """Type/range checks with messages that name the key; also builds the model config once so that a
    bad `model.overrides` / `loss` key fails here, before any work starts."""
    m, d, o, s, t, e = (cfg[k] for k in ("model", "data", "optim", "schedule", "train", "eval"))
    _check(m["preset"] in PRESETS, f"model.preset {m['preset']!r} is not one of {sorted(PRESETS)}")
    model_config(cfg)  # raises on unknown override keys
    _check(isinstance(d["num_workers"], int) and d["num_workers"] >= 0, "data.num_workers must be an int >= 0")
    for key in ("epoch_length", "val_samples", "size"):
        v = d[key]
        _check(v is None or (isinstance(v, int) and v > 0), f"data.{key} must be null or a positive int, got {v!r}")
    _check(d["train_mode"] in ("train", "eval"), "data.train_mode must be 'train' or 'eval'")
    for key in ("lr", "weight_decay", "eps"):
        _check(isinstance(o[key], (int, float)) and o[key] >= 0, f"optim.{key} must be a number >= 0")
    _check(isinstance(o["betas"], (list, tuple)) and len(o["betas"]) == 2, "optim.betas must be [beta1, beta2]")
    _check(o["clip_grad_norm"] is None or (isinstance(o["clip_grad_norm"], (int, float)) and o["clip_grad_norm"] >= 0),
           "optim.clip_grad_norm must be null or a number >= 0")
    _check(isinstance(o["bert_frozen_last_layers"], int) and o["bert_frozen_last_layers"] >= 0,
           "optim.bert_frozen_last_layers must be an int >= 0")
    _check(isinstance(o["freeze"], (list, tuple)) and all(isinstance(x, str) for x in o["freeze"]),
           "optim.freeze must be a list of parameter-name prefixes")
    for prefix, mult in o["lr_multipliers"].items():
        _check(isinstance(mult, (int, float)) and mult >= 0, f"optim.lr_multipliers[{prefix!r}] must be a number >= 0")
    _check(isinstance(s["max_steps"], int) and s["max_steps"] > 0, "schedule.max_steps must be a positive int")
    _check(isinstance(s["constant_until"], (int, float)) and 0 <= s["constant_until"] <= 1,
           "schedule.constant_until is a fraction of max_steps in [0, 1]")
    _check(isinstance(s["warmup_steps"], int) and s["warmup_steps"] >= 0, "schedule.warmup_steps must be an int >= 0")
    _check(isinstance(s["lr_end"], (int, float)) and s["lr_end"] >= 0, "schedule.lr_end must be >= 0")
    _check(isinstance(t["batch_size"], int) and t["batch_size"] > 0, "train.batch_size must be a positive int")
    _check(t["eval_batch_size"] is None or (isinstance(t["eval_batch_size"], int) and t["eval_batch_size"] > 0),
           "train.eval_batch_size must be null or a positive int")
    _check(t["amp"] in ("auto", "fp16", "bf16", "off", True, False), "train.amp must be auto, fp16, bf16 or off")
    _check(t["device"] in ("auto", "cpu", "cuda"), "train.device must be auto, cpu or cuda")
    for key in ("log_every", "eval_every", "ckpt_every"):
        _check(isinstance(t[key], int) and t[key] >= 0, f"train.{key} must be an int >= 0")
    _check(isinstance(t["max_nonfinite"], int) and t["max_nonfinite"] > 0, "train.max_nonfinite must be a positive int")
    _check(isinstance(t["seed"], int), "train.seed must be an int")
    _check(t["num_threads"] is None or (isinstance(t["num_threads"], int) and t["num_threads"] > 0),
           "train.num_threads must be null or a positive int")
    _check(e["nt_rule"] in ("first", "last", "any"), "eval.nt_rule must be first, last or any")
    _check(isinstance(e["threshold"], (int, float)) and 0 < e["threshold"] < 1, "eval.threshold must be in (0, 1)")


def find_placeholders(cfg: Any, prefix: str = "") -> List[str]:
    """Keys whose value is still a `<PLACEHOLDER>` string (the paper configs ship some for local paths)."""
    out: List[str] = []
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            out += find_placeholders(v, f"{prefix}{k}.")
    elif isinstance(cfg, str) and cfg.startswith("<") and cfg.endswith(">"):
        out.append(f"{prefix[:-1]}={cfg}")
    return out


def check_placeholders(cfg: Dict[str, Any]) -> None:
    """Refuse to start a run with unset placeholders, naming the override to give."""
    found = find_placeholders(cfg)
    if found:
        raise ConfigError("set these config values (e.g. as key=/path on the command line): " + ", ".join(found))


def model_config(cfg: Dict[str, Any]) -> MABPConfig:
    """The MABPConfig of a run: preset <- model.overrides <- loss section (as loss.* keys)."""
    dotted = _flatten(cfg["model"]["overrides"])
    loss_fields = set(LossConfig.__dataclass_fields__)
    for key, value in cfg["loss"].items():
        if key not in loss_fields:
            raise ConfigError(f"unknown loss key {key!r}; LossConfig fields: {sorted(loss_fields)}")
        dotted[f"loss.{key}"] = value
    try:
        return get_config(cfg["model"]["preset"], **dotted)
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"bad model.overrides/loss: {exc}") from exc


def dump_config(cfg: Dict[str, Any], path: Union[str, os.PathLike]) -> Path:
    """Write the resolved config as YAML (atomically: a half-written config.yaml would mislead)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f, sort_keys=False, default_flow_style=None)
    os.replace(tmp, path)
    return path


__all__ = ["DEFAULTS", "ConfigError", "load_config", "parse_override", "apply_override", "validate",
           "find_placeholders", "check_placeholders",
           "model_config", "dump_config"]

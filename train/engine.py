"""The training engine: a step-based loop (the official recipe counts iterations, not epochs).

    trainer = Trainer(load_config("train/configs/tiny_synthgres.yaml"))
    result = trainer.fit()          # {"step", "best", "interrupted", "last_metrics", ...}
    metrics, meter = evaluate(model, loader, device)   # one evaluation pass, DETR-style

One iteration: forward (fp16 autocast on CUDA; the pixel decoder forces fp32 itself) -> criterion in
fp32 -> a NaN/inf loss skips the update on every rank (no backward, no optimizer or scaler step) ->
backward -> unscale -> clip the full-model grad norm -> AdamW step -> scaler update. A skipped iteration
still counts as a step: its batch is consumed and the lr schedule moves on, so `max_steps` is the number
of iterations (and data position = step). After `max_nonfinite` consecutive skips the run stops with
`NonFiniteLossError` and the last good checkpoint is left as it was.

Every `eval_every` steps (and at the last step) the model is evaluated on the val split at the model's
S x S against the squash-resized GT (the official protocol), with GRESMeter (gIoU, cIoU, N-acc, T-acc,
Pr@) reduced over ranks; `best.pt` follows val gIoU; `last.pt` is written every `ckpt_every` steps, at the
end and on Ctrl-C. Files in the run folder: config.yaml, log.jsonl (one JSON line per log step and per
evaluation), curves.png, last.pt, best.pt, and TensorBoard events when tensorboard is installed.

Ctrl-C: the first SIGINT (or a SIGTERM) asks for a stop at the end of the current step (all ranks agree
through an all-reduce), then last.pt is written and fit() returns with interrupted=True. A
KeyboardInterrupt raised elsewhere (a second Ctrl-C, or a hook) also saves last.pt if the step in
progress had not started its update; only rank 0's RNG state is recorded then -- the snapshot taken at
the last step boundary, never the live state (the interrupted step may already have drawn its dropout
masks). DataLoader workers ignore SIGINT and SIGTERM: a SIGTERM to the whole process group (Slurm,
systemd) reaches the main process, which stops and saves, instead of killing the workers under it.

Faults: the run folder is locked (train/run_lock.py: a second run refuses and names the holder; a dead
holder's lock is taken over); every log record carries the run id; log.jsonl is rewritten atomically on
resume; checkpoints are fsynced, renamed into place and checksummed (mabp.registry), a failed write
(disk full) raises CheckpointWriteError with one line and keeps the previous file; the previous last.pt
is kept as last.prev.pt and used, with a warning, when last.pt is unreadable on resume
(train/checkpointing.py).
"""
from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from mabp.criterion import build_criterion
from mabp.metrics import GRESMeter
from mabp.registry import build_mabp, load_checkpoint, load_state, save_checkpoint
from mabp.tokenizer import TextTokenizer
from train import distributed as D
from train.checkpointing import (atomic_write_text, capture_rng, keep_previous, load_resume_checkpoint,
                                 pick_rng_for_rank, restore_rng, seed_all)
from train.run_lock import RunLock, RunLockedError, new_run_id
from train.collate import Collator, to_device
from train.config import dump_config, model_config
from train.optim import WarmupConstantCosine, build_optimizer, freeze_bert_parts, freeze_prefixes, unwrap
from train.sampler import ShardedBatchSampler, eval_shard
from train.visual_cache import VisualFeatureCache, cacheable_visual_pass
from train.warm_start import load_adapted

EVAL_KEYS = ("gIoU", "cIoU", "N-acc", "T-acc", "Pr@0.7", "Pr@0.8", "Pr@0.9", "NT-AUROC")
BEST_METRIC = "gIoU"


class NonFiniteLossError(RuntimeError):
    """Raised after `train.max_nonfinite` consecutive iterations with a NaN/inf loss or gradient."""


# --------------------------------------------------------------------------------------------- eval
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, nt_rule: str = "any",
             threshold: float = 0.5, min_pixels: int = 0, amp: bool = False,
             criterion: Optional[nn.Module] = None, progress: bool = False,
             amp_dtype: torch.dtype = torch.float16) -> Tuple[Dict[str, Any], GRESMeter]:
    """One pass over `loader`; returns (metrics, meter), both merged over ranks when distributed.

    The loop is train.evaluate's (`evaluation_loop`), so training-time validation and the CLI score
    identically: masks decided at S x S against the batch's S x S GT, the raw (un-zeroed) masks scored.
    metrics = meter.compute() + "val_loss" (when a criterion is given) + "breakdown" (per target tag) +
    "NT-AUROC" (% or None; train.evaluate.nt_auroc).
    """
    from train.evaluate import evaluation_loop, nt_auroc

    shard = getattr(loader.dataset, "indices", None)  # the Subset of this rank's eval shard
    acc = evaluation_loop(unwrap(model), loader, device, nt_rule, threshold, min_pixels, amp, criterion=criterion,
                          progress=progress, sample_indices=shard, amp_dtype=amp_dtype)
    meter = acc["meter"]
    metrics: Dict[str, Any] = meter.compute() if len(meter) else {"n": 0}
    if criterion is not None:
        metrics["val_loss"] = acc["loss_sum"] / acc["loss_n"] if acc["loss_n"] else None
    if len(meter):
        metrics["breakdown"] = meter.breakdown("target")
        metrics["NT-AUROC"] = nt_auroc(acc["records"])  # None without an NT branch or one kind of sample
    return metrics, meter


def _to_float(out: Dict[str, List[Optional[torch.Tensor]]]) -> Dict[str, List[Optional[torch.Tensor]]]:
    """Model outputs in fp32 (they may be fp16 under autocast): the losses and thresholds want fp32."""
    return {k: [t.float() if isinstance(t, torch.Tensor) else t for t in v] if isinstance(v, list) else v
            for k, v in out.items()}


# --------------------------------------------------------------------------------------------- data
def build_datasets(cfg: Dict[str, Any], image_size: int):
    """(train dataset, val dataset) from the `data` section."""
    from train.data import build_dataset

    d = cfg["data"]
    kw = dict(d["kwargs"])
    name = d["dataset"].lower()
    train_kw = dict(kw)
    if name == "synthgres" and d["epoch_length"] is not None:
        train_kw["length"] = int(d["epoch_length"])  # SynthGRES: the window of the unlimited stream
    train_ds = build_dataset(name, d["train_split"], root=d["root"], mode=d["train_mode"], size=d["size"], **train_kw)
    val_ds = build_dataset(name, d["val_split"], root=d["root"], mode="eval", size=d["size"], **kw)
    if len(train_ds) == 0:
        raise ValueError(f"the train split {d['train_split']!r} of {name} is empty")
    if len(val_ds) == 0:
        raise ValueError(f"the val split {d['val_split']!r} of {name} is empty")
    return train_ds, val_ds


def _worker_ignores_sigint(worker_id: int) -> None:  # noqa: ARG001 - DataLoader API
    """DataLoader workers ignore Ctrl-C and SIGTERM: the main process decides when to stop (after the
    current step, saving last.pt) and shuts them down; a worker killed by the same signal -- Ctrl-C and
    Slurm/systemd's SIGTERM go to the whole process group -- would break that step ("DataLoader worker
    killed by signal") and nothing would be saved."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def compile_or_eager(model: nn.Module) -> nn.Module:
    """torch.compile(model) (inductor; on CPU it needs a C++ compiler), or the eager model with a
    warning when compilation is unavailable. Compilation itself happens at the first call; a failure
    there falls back to eager too (see CompiledOrEager)."""
    try:
        compiled = torch.compile(model)
    except Exception as exc:  # noqa: BLE001 - any backend problem means: run eager
        warnings.warn(f"train.compile: torch.compile is unavailable ({exc}); training eagerly")
        return model
    return CompiledOrEager(compiled, model)


class CompiledOrEager:
    """Calls the compiled model; if the first compiled call raises (missing compiler, unsupported op),
    warns once and uses the eager model from then on. Same outputs either way."""

    def __init__(self, compiled: Any, eager: nn.Module):
        self.compiled, self.eager, self.ok = compiled, eager, None

    def __call__(self, *args, **kwargs):
        if self.ok is False:
            return self.eager(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            if self.ok:  # it worked before: a real error of this batch, not a compile problem
                raise
            warnings.warn(f"train.compile: compilation failed ({type(exc).__name__}: {exc}); training eagerly")
            self.ok = False
            return self.eager(*args, **kwargs)
        self.ok = True
        return out


# --------------------------------------------------------------------------------------------- trainer
Hook = Callable[["Trainer"], None]


class Trainer:
    """Builds everything from a resolved training config (train.config.load_config) and runs it.

    Args:
        cfg: the resolved config dict.
        hooks: callables hook(trainer) run after every completed step (after logging, evaluation and
            checkpointing of that step); tests use them to interrupt a run at a given step.
        dist_info: an already initialised DistInfo; None = initialise from the environment (torchrun).
    """

    def __init__(self, cfg: Dict[str, Any], hooks: Sequence[Hook] = (), dist_info: Optional[D.DistInfo] = None):
        self.cfg = cfg
        self.hooks = list(hooks)
        t, o, s = cfg["train"], cfg["optim"], cfg["schedule"]
        if t["num_threads"]:
            torch.set_num_threads(int(t["num_threads"]))
        self.dist = dist_info or D.init_distributed(t["device"])
        self.device = self.dist.device
        self.is_main = self.dist.is_main
        self.out_dir = Path(t["output_dir"])
        amp = t["amp"]
        if amp not in ("auto", "fp16", "bf16", "off", True, False, None):
            raise ValueError(f"train.amp must be auto, fp16, bf16 or off, got {amp!r}")
        if amp in ("fp16", True) and self.device.type != "cuda":
            raise ValueError("train.amp=fp16 needs CUDA (fp16 autocast + GradScaler); use amp: auto, bf16 or off on CPU")
        # fp16 (with a GradScaler) on CUDA by default, as the official recipe; bf16 needs no scaler and
        # also runs on CPUs with native bf16 (AVX512-BF16 / AMX). The pixel decoder stays fp32 either way.
        self.amp = (self.device.type == "cuda" and amp in ("auto", "fp16", True)) or amp == "bf16"
        self.amp_dtype = torch.bfloat16 if amp == "bf16" else torch.float16

        # Same seed on every rank for the model build (DDP also broadcasts rank 0's weights), then a
        # per-rank stream for dropout.
        seed_all(t["seed"])
        self.model_cfg = model_config(cfg)
        ckpt_init = cfg["model"]["checkpoint"]
        self.init_report = None
        if ckpt_init and cfg["model"]["checkpoint_adapt"]:
            # A checkpoint of another size of the architecture (e.g. the first lite): transfer what fits.
            model = build_mabp(self.model_cfg)
            self.init_report = load_adapted(model, load_checkpoint(ckpt_init))
        else:
            model = build_mabp(self.model_cfg, checkpoint=ckpt_init)
        if cfg["model"]["disable_dropout"]:
            for m in model.modules():
                if isinstance(m, nn.Dropout):
                    m.p = 0.0
        self.frozen: List[str] = []
        self.n_frozen_bert = 0
        if o["freeze_bert_embeddings_and_last_layers"]:
            self.frozen = freeze_bert_parts(model, o["bert_frozen_last_layers"])
            self.n_frozen_bert = len(self.frozen)
        if o.get("freeze"):
            self.frozen += freeze_prefixes(model, o["freeze"])
        model.to(self.device)
        if t["channels_last"] and self.device.type == "cuda":
            model.to(memory_format=torch.channels_last)  # before DDP registers the parameters
        model.train()
        self.bare_model = model
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Frozen parts have requires_grad=False, so every parameter DDP sees gets a gradient:
            # no find_unused_parameters (and its extra graph traversal) needed.
            self.model: nn.Module = nn.parallel.DistributedDataParallel(
                model, device_ids=ids, find_unused_parameters=bool(t["find_unused_parameters"]))
        else:
            self.model = model
        seed_all(t["seed"] + self.dist.rank)

        self.optimizer = build_optimizer(model, o["lr"], o["weight_decay"], o["betas"], o["eps"], o["lr_multipliers"])
        self.scheduler = WarmupConstantCosine(o["lr"], s["max_steps"], s["constant_until"], s["lr_end"],
                                              s["warmup_steps"], s["warmup_factor"])
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        # build_criterion follows the model config: the MABP loss with the supervised heads of the
        # ablation switches, or the ReLA baseline's loss for arch "rela".
        self.criterion = build_criterion(model.cfg).to(self.device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # One visual pass per image when the visual stages are frozen and language-free (lite).
        mb = t["visual_cache_mb"]
        self.visual_cache = VisualFeatureCache(int(mb) << 20) if mb and cacheable_visual_pass(model) else None
        self.forward_model = self.model
        if t["compile"]:
            self.forward_model = compile_or_eager(self.model)

        self.tokenizer = TextTokenizer(model.cfg.text)
        self.image_size = int(model.cfg.image_size)
        self.collator = Collator(self.tokenizer, self.image_size)
        self.train_ds, self.val_ds = build_datasets(cfg, self.image_size)
        d = cfg["data"]
        self.batch_size = int(t["batch_size"])
        self.global_batch = self.batch_size * self.dist.world_size
        epoch_length = d["epoch_length"] if d["dataset"].lower() != "synthgres" else None
        self.epoch_length = len(self.train_ds) if epoch_length is None else min(int(epoch_length), len(self.train_ds))
        self.steps_per_epoch = self.epoch_length // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"an epoch of {self.epoch_length} samples is smaller than the total batch "
                             f"{self.global_batch}; raise data.epoch_length or lower train.batch_size")
        n_val = len(self.val_ds) if d["val_samples"] is None else min(int(d["val_samples"]), len(self.val_ds))
        self.num_val = n_val
        shard = eval_shard(n_val, self.dist.rank, self.dist.world_size)
        self.val_loader = DataLoader(Subset(self.val_ds, shard), batch_size=t["eval_batch_size"] or self.batch_size,
                                     shuffle=False, collate_fn=self.collator, num_workers=d["num_workers"],
                                     pin_memory=self.device.type == "cuda", worker_init_fn=_worker_ignores_sigint,
                                     # its own generator: an evaluation never moves the global RNG (dropout)
                                     generator=torch.Generator().manual_seed(0))

        # Run state (what last.pt stores).
        self.step = 0
        self.best: Dict[str, Any] = {"metric": BEST_METRIC, "value": None, "step": None}
        self.nonfinite_streak = 0
        self.last_metrics: Optional[Dict[str, Any]] = None
        self._in_update = False
        self._stop_requested = False
        self._tb = None
        self._pbar: Optional[tqdm] = None
        self._acc: Dict[str, float] = {}
        self._acc_n = 0
        self._acc_skipped = 0
        self._acc_t0 = time.time()
        self._acc_step0 = 0
        self.run_id = new_run_id()
        self._lock: Optional[RunLock] = None
        self._boundary_rng: Optional[Tuple[int, Dict[str, Any]]] = None  # (step, RNG state at that boundary)

    # ------------------------------------------------------------------ resume
    def resume_path(self) -> Optional[Path]:
        """The checkpoint to resume from per train.resume (auto | path | null)."""
        r = self.cfg["train"]["resume"]
        if r in (None, False, "null", "none", ""):
            return None
        if r == "auto":
            p = self.out_dir / "last.pt"
            return p if p.is_file() else None
        p = Path(r)
        if not p.is_file():
            raise FileNotFoundError(f"train.resume: checkpoint {p} not found")
        return p

    def load_resume(self, path: Path) -> None:
        """Restore model, optimizer, scheduler, scaler, RNG states, step and best from `path` (or, when it
        is unreadable, from the previous last.prev.pt with a warning; CheckpointError if neither loads)."""
        ckpt, path = load_resume_checkpoint(path, load_checkpoint)
        for key in ("step", "optimizer", "train_config"):
            if key not in ckpt:
                raise ValueError(f"{path} is a model checkpoint without training state ({key!r} missing); "
                                 "to start from its weights use model.checkpoint, not train.resume")
        load_state(self.bare_model, ckpt, strict=True)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        # The lr comes from the schedule (a function of the step), not from the stored groups.
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] = self.cfg["optim"]["lr"] * g.get("lr_mult", 1.0)
        self.scheduler.load_state_dict(ckpt.get("scheduler", {}))
        if self.amp and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        self.best = dict(ckpt.get("best") or self.best)
        self.nonfinite_streak = int(ckpt.get("nonfinite_streak", 0))
        self.last_metrics = ckpt.get("metrics")
        old = ckpt.get("data", {})
        mine = self._data_state()
        changed = [k for k in ("seed", "global_batch", "epoch_length") if k in old and old[k] != mine[k]]
        if changed:
            warnings.warn(f"resuming {path} with a different data order ({', '.join(changed)} changed): "
                          "the remaining samples will not be the ones the original run would have seen")
        rng = pick_rng_for_rank(ckpt.get("rng"), self.dist.rank)
        if rng is None or ckpt.get("world_size", 1) != self.dist.world_size:
            warnings.warn(f"{path} has no RNG state for rank {self.dist.rank} of {self.dist.world_size}: "
                          "dropout masks after the resume differ from an uninterrupted run")
            seed_all(self.cfg["train"]["seed"] + self.dist.rank + 1_000_003 * self.step)
        else:
            restore_rng(rng)
        if self.is_main:
            self._truncate_log(self.step)
            self._print(f"resumed from {path} at step {self.step} (epoch {self.step // self.steps_per_epoch})")

    def _data_state(self) -> Dict[str, Any]:
        return {"seed": self.cfg["train"]["seed"], "global_batch": self.global_batch,
                "steps_per_epoch": self.steps_per_epoch, "epoch_length": self.epoch_length}

    # ------------------------------------------------------------------ checkpoints
    def save(self, name: str = "last.pt", full: bool = True, gather_rng: bool = True,
             rng_state: Optional[Dict[str, Any]] = None) -> Optional[Path]:
        """Write a checkpoint atomically (rank 0). full=False leaves out optimizer/scheduler/scaler/RNG
        (best.pt is for inference and evaluation). With gather_rng every rank takes part (a collective).
        rng_state: this rank's RNG snapshot to store instead of the live state (an emergency save).
        The last.pt being replaced is kept as last.prev.pt. Raises CheckpointWriteError (disk full...)."""
        rng = None
        if full:
            mine = rng_state if rng_state is not None else capture_rng()
            rng = D.all_gather_object(mine) if gather_rng else [mine]
        if not self.is_main:
            return None
        extra: Dict[str, Any] = {
            "train_config": self.cfg, "step": self.step, "epoch": self.step // self.steps_per_epoch,
            "best": dict(self.best), "nonfinite_streak": self.nonfinite_streak,
            "world_size": self.dist.world_size, "data": self._data_state(),
            "metrics": _jsonable(self.last_metrics),
        }
        if full:
            extra.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                         scaler=self.scaler.state_dict() if self.amp else {}, rng=rng)
        if name == "last.pt":
            keep_previous(self.out_dir / name)
        return save_checkpoint(self.bare_model, self.out_dir / name, extra=extra)

    # ------------------------------------------------------------------ logging
    def _print(self, msg: str) -> None:
        if self.is_main:
            (self._pbar.write if self._pbar is not None else print)(msg)

    def _log(self, record: Dict[str, Any]) -> None:
        if not self.is_main:
            return
        record = dict(record, run=self.run_id)
        with open(self.out_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")
        if self._tb is not None:
            prefix = "train" if record.get("type") == "train" else "val"
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epoch"):
                    self._tb.add_scalar(f"{prefix}/{k}", v, record["step"])

    def _truncate_log(self, step: int) -> None:
        """Drop log lines written after `step` by a run that died after its last checkpoint."""
        path = self.out_dir / "log.jsonl"
        if not path.is_file():
            return
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if int(json.loads(line).get("step", 0)) <= step:
                    keep.append(line)
            except (ValueError, AttributeError):
                continue
        atomic_write_text(path, "".join(k + "\n" for k in keep))  # a kill now leaves old or new, never empty

    def _open_tensorboard(self) -> None:
        if not (self.is_main and self.cfg["train"]["tensorboard"]):
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard not installed: the JSON log and curves.png remain
            return
        self._tb = SummaryWriter(log_dir=str(self.out_dir / "tb"))

    def _flush_train_log(self) -> None:
        """Average the loss terms since the last log over steps and ranks; one JSON line."""
        sums = dict(self._acc, _n=float(self._acc_n), _skipped=float(self._acc_skipped))
        sums = D.all_reduce_sums(sums, self.device)
        n = sums.pop("_n")
        skipped = sums.pop("_skipped")
        dt = max(time.time() - self._acc_t0, 1e-9)
        steps = max(self.step - self._acc_step0, 1)
        record: Dict[str, Any] = {"type": "train", "step": self.step, "epoch": self.step // self.steps_per_epoch,
                                  "lr": self.scheduler.lr * self.scheduler.factor(self.step - 1)}
        for k, v in sums.items():
            record[k] = v / n if n else None
        record.update(skipped=int(skipped), sec_per_step=dt / steps,
                      samples_per_sec=steps * self.global_batch / dt, time=time.time())
        self._log(record)
        self._acc, self._acc_n, self._acc_skipped = {}, 0, 0
        self._acc_t0, self._acc_step0 = time.time(), self.step

    # ------------------------------------------------------------------ one step
    def train_step(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        """One iteration. Returns {"skipped": bool, loss terms as floats, "grad_norm", "lr"}."""
        batch = to_device(batch, self.device)
        lr = self.scheduler.apply(self.optimizer, self.step)
        visual = None
        if self.visual_cache is not None:
            visual = self.visual_cache.features(self.bare_model, batch["images"], batch["image_keys"])
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            out = self.forward_model(batch["images"], batch["input_ids"], batch["attention_mask"], visual=visual)
        losses = self.criterion(_to_float(out), batch["gt_masks"], batch["no_target"])
        loss = losses["loss"]
        # Every rank must take the same branch (a rank that skips backward would hang DDP's all-reduce).
        bad = D.all_reduce_max_flag(not bool(torch.isfinite(loss)), self.device)
        stats: Dict[str, Any] = {"lr": lr, "skipped": bad}
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            stats["reason"] = "loss"
            return stats
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg["optim"]["clip_grad_norm"]
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip if clip else float("inf"), foreach=True)
        if not self.amp and not bool(torch.isfinite(grad_norm)):
            # Without a GradScaler nothing else would stop inf/NaN gradients from reaching the weights.
            self.optimizer.zero_grad(set_to_none=True)
            stats.update(skipped=True, reason="grad")
            return stats
        self._in_update = True
        self.scaler.step(self.optimizer)  # skips itself on inf grads under AMP (normal fp16 behaviour)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        stats.update({k: float(v.detach()) for k, v in losses.items()})
        stats["grad_norm"] = float(grad_norm)
        return stats

    # ------------------------------------------------------------------ evaluation
    def run_eval(self) -> Dict[str, Any]:
        metrics, _ = evaluate(self.model, self.val_loader, self.device, self.cfg["eval"]["nt_rule"],
                              self.cfg["eval"]["threshold"], self.cfg["eval"]["min_pixels"], self.amp,
                              criterion=self.criterion, progress=self.is_main, amp_dtype=self.amp_dtype)
        self.last_metrics = metrics
        record = {"type": "eval", "step": self.step, "epoch": self.step // self.steps_per_epoch}
        record.update({k: metrics.get(k) for k in EVAL_KEYS + ("val_loss", "n")})
        record["breakdown"] = {g: {k: v.get(k) for k in ("gIoU", "cIoU", "n")}
                               for g, v in metrics.get("breakdown", {}).items()}
        self._log(record)
        value = metrics.get(BEST_METRIC)
        if self.is_main:
            self._print(f"step {self.step}: " + ", ".join(
                f"{k} {metrics[k]:.2f}" for k in EVAL_KEYS[:4] if metrics.get(k) is not None))
        if value is not None and (self.best["value"] is None or value > self.best["value"]):
            self.best = {"metric": BEST_METRIC, "value": float(value), "step": self.step}
            self.save("best.pt", full=False)
        if self.is_main:
            plot_curves(self.out_dir / "log.jsonl", self.out_dir / "curves.png")
        return metrics

    # ------------------------------------------------------------------ the loop
    def _make_loader(self, epoch: int, start_step: int) -> DataLoader:
        if hasattr(self.train_ds, "set_epoch"):
            self.train_ds.set_epoch(epoch)  # SynthGRES: the stream window; gRefCOCO: the sentence draw
        sampler = ShardedBatchSampler(len(self.train_ds), self.batch_size, self.dist.rank, self.dist.world_size,
                                      seed=self.cfg["train"]["seed"], epoch=epoch, epoch_length=self.epoch_length,
                                      start_step=start_step)
        # A private generator: DataLoader draws its worker base seed from it, so creating an iterator
        # never touches the global torch RNG (which drives dropout and must match across a resume).
        gen = torch.Generator().manual_seed(self.cfg["train"]["seed"] * 1000 + epoch)
        return DataLoader(self.train_ds, batch_sampler=sampler, collate_fn=self.collator,
                          num_workers=self.cfg["data"]["num_workers"], generator=gen,
                          pin_memory=self.device.type == "cuda", worker_init_fn=_worker_ignores_sigint)

    def _install_signal_handlers(self) -> Dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        old = {}

        def request_stop(signum, frame):  # noqa: ARG001 - signal API
            if self._stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt  # second Ctrl-C: stop now
            self._stop_requested = True
            self._print("stop requested: finishing the current step, then saving last.pt (Ctrl-C again to abort)")

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old[sig] = signal.signal(sig, request_stop)
            except (ValueError, OSError):
                pass
        return old

    def fit(self) -> Dict[str, Any]:
        """Train until schedule.max_steps (resuming first if configured). Returns a summary dict."""
        t, s = self.cfg["train"], self.cfg["schedule"]
        max_steps = int(s["max_steps"])
        self._take_lock()
        try:
            return self._fit(max_steps)
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def _take_lock(self) -> None:
        """Rank 0 locks the run folder; every rank learns whether that worked (no rank is left waiting)."""
        error: Optional[RunLockedError] = None
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            try:
                self._lock = RunLock(self.out_dir, self.run_id).acquire()
            except RunLockedError as exc:
                error = exc
            if self._lock is not None and self._lock.stale:
                self._print(f"note: took over the lock of {self.out_dir} left by a run that is gone "
                            f"(run {self._lock.stale.get('run_id')}, pid {self._lock.stale.get('pid')})")
        if D.all_reduce_max_flag(error is not None, self.device):
            raise error or RunLockedError(f"the run folder {self.out_dir} is in use by another run (see rank 0)")

    def _fit(self, max_steps: int) -> Dict[str, Any]:
        D.barrier()
        path = self.resume_path()
        if path is not None:
            self.load_resume(path)
        if self.is_main:
            dump_config(self.cfg, self.out_dir / "config.yaml")
            self._describe(path)
        result: Dict[str, Any] = {"interrupted": False, "output_dir": str(self.out_dir)}
        if self.step >= max_steps:
            self._print(f"nothing to do: step {self.step} >= schedule.max_steps {max_steps}")
            result.update(step=self.step, best=self.best, last_metrics=self.last_metrics)
            return result
        self._open_tensorboard()
        old_handlers = self._install_signal_handlers()
        self._pbar = tqdm(total=max_steps, initial=self.step, disable=not self.is_main, dynamic_ncols=True,
                          desc="train", smoothing=0.1)
        self._acc_t0, self._acc_step0 = time.time(), self.step
        try:
            self._loop(max_steps)
        except KeyboardInterrupt:
            result["interrupted"] = True
            if self._in_update:
                self._print("interrupted during a weight update: last.pt NOT rewritten (it may be older)")
            else:
                # Other ranks may be gone: no collectives, only rank 0's RNG state is recorded -- the one
                # of the last step boundary (the step in progress may already have drawn dropout masks).
                snap = self._boundary_rng
                rng = snap[1] if snap is not None and snap[0] == self.step else None
                self.save("last.pt", gather_rng=False, rng_state=rng)
                self._print(f"interrupted: saved {self.out_dir / 'last.pt'} at step {self.step}")
        finally:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            self._pbar.close()
            self._pbar = None
            if self._tb is not None:
                self._tb.close()
                self._tb = None
        if self._stop_requested and not result["interrupted"] and self.step < max_steps:
            result["interrupted"] = True
        result.update(step=self.step, best=self.best, last_metrics=_jsonable(self.last_metrics))
        return result

    def _loop(self, max_steps: int) -> None:
        t = self.cfg["train"]
        # RNG state at the current step boundary, for an emergency save (nothing between two train_steps
        # draws from the global generators: data order, the eval loader and the workers use their own).
        self._boundary_rng = (self.step, capture_rng())
        while self.step < max_steps:
            epoch, offset = divmod(self.step, self.steps_per_epoch)
            for batch in self._make_loader(epoch, offset):
                stats = self.train_step(batch)
                self.step += 1
                self._in_update = False
                self._boundary_rng = (self.step, capture_rng())
                self._after_step(stats, max_steps)
                for hook in self.hooks:
                    hook(self)
                stop = D.all_reduce_max_flag(self._stop_requested, self.device) if self.dist.distributed \
                    else self._stop_requested
                if stop and self.step < max_steps:
                    self._stop_requested = True
                    self.save("last.pt")
                    self._print(f"stopped: saved {self.out_dir / 'last.pt'} at step {self.step}")
                    return
                if self.step >= max_steps:
                    return

    def _after_step(self, stats: Dict[str, Any], max_steps: int) -> None:
        t = self.cfg["train"]
        if stats["skipped"]:
            self.nonfinite_streak += 1
            self._acc_skipped += 1
            if self.is_main:
                warnings.warn(f"step {self.step}: non-finite {stats.get('reason', 'loss')}; update skipped "
                              f"({self.nonfinite_streak}/{t['max_nonfinite']} in a row)")
            if self.nonfinite_streak >= t["max_nonfinite"]:
                self._log({"type": "stop", "step": self.step, "reason": "nonfinite",
                           "streak": self.nonfinite_streak})
                raise NonFiniteLossError(
                    f"{self.nonfinite_streak} consecutive non-finite losses/gradients (train.max_nonfinite="
                    f"{t['max_nonfinite']}) at step {self.step}; the last good checkpoint is "
                    f"{self.out_dir / 'last.pt'} (left as it was). Lower optim.lr or check the data.")
        else:
            self.nonfinite_streak = 0
            for k, v in stats.items():
                if k.startswith("loss") or k == "grad_norm":
                    self._acc[k] = self._acc.get(k, 0.0) + v
            self._acc_n += 1
            if self._pbar is not None and self.is_main:
                post = {("total" if k == "loss" else k[5:]): f"{v:.4f}" for k, v in stats.items()
                        if k.startswith("loss")}
                post["lr"] = f"{stats['lr']:.2e}"
                self._pbar.set_postfix(post, refresh=False)
        if self._pbar is not None:
            self._pbar.update(1)
        last = self.step >= max_steps
        if (t["log_every"] and self.step % t["log_every"] == 0) or last:
            self._flush_train_log()
        if (t["eval_every"] and self.step % t["eval_every"] == 0) or (last and t["eval_every"]):
            self.run_eval()
        # No periodic last.pt during a non-finite streak: the one from before the streak is the state a
        # resume should restart from ("keep the last good checkpoint").
        periodic = t["ckpt_every"] and self.step % t["ckpt_every"] == 0 and self.nonfinite_streak == 0
        if periodic or last:
            self.save("last.pt")
            if last and self.is_main:
                plot_curves(self.out_dir / "log.jsonl", self.out_dir / "curves.png")

    def _describe(self, resumed: Optional[Path]) -> None:
        n_train = sum(p.numel() for p in self.params)
        n_all = sum(p.numel() for p in self.bare_model.parameters())
        lines = [
            f"run folder: {self.out_dir}",
            f"model: {self.model_cfg.preset} at {self.image_size}x{self.image_size}, {n_all:,} parameters, "
            f"{n_train:,} trainable (frozen tensors: {self.n_frozen_bert} of BERT, "
            f"{len(self.frozen) - self.n_frozen_bert} by optim.freeze)",
            f"device: {self.device}, world size {self.dist.world_size}, "
            f"amp {str(self.amp_dtype).replace('torch.', '') if self.amp else 'off'}, "
            f"visual cache {'on' if self.visual_cache is not None else 'off'}, "
            f"compile {'on' if self.forward_model is not self.model else 'off'}, "
            f"{torch.get_num_threads()} CPU threads per process",
            f"batch: {self.batch_size} per process x {self.dist.world_size} = {self.global_batch} total; "
            f"{self.steps_per_epoch} steps per epoch of {self.epoch_length} samples; "
            f"{self.cfg['schedule']['max_steps']} steps",
            f"val: {self.num_val} samples of {self.cfg['data']['dataset']}/{self.cfg['data']['val_split']} "
            f"every {self.cfg['train']['eval_every']} steps",
            f"resume: {resumed if resumed else 'fresh start'}",
        ]
        if self.init_report is not None and not resumed:
            r = self.init_report
            lines.append(f"init: {self.cfg['model']['checkpoint']} adapted: {len(r['copied'])} tensors copied, "
                         f"{len(r['sliced'])} sliced to fewer sampling points, {len(r['fresh'])} fresh, "
                         f"{len(r['unused'])} unused")
        self._print("\n".join(lines))


# --------------------------------------------------------------------------------------------- helpers
def _jsonable(obj: Any) -> Any:
    """Plain python types (numpy scalars -> float/int, NaN kept as None), for JSON and checkpoints."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return _jsonable(obj.item())
    return obj


def read_log(path: Path) -> List[Dict[str, Any]]:
    """The records of a log.jsonl (bad lines skipped)."""
    out = []
    if not Path(path).is_file():
        return out
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def plot_curves(log_path: Path, png_path: Path) -> Optional[Path]:
    """Loss terms and val metrics vs step, from log.jsonl, to a PNG (Agg canvas; no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_log(log_path)
    train = [r for r in records if r.get("type") == "train"]
    evals = [r for r in records if r.get("type") == "eval"]
    fig = Figure(figsize=(11, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    keys = sorted({k for r in train for k in r if k.startswith("loss")}, key=lambda k: (k != "loss", k))
    for k in keys:
        pts = [(r["step"], r[k]) for r in train if r.get(k) is not None]
        if pts:
            xs, ys = zip(*pts)
            # Markers while there are few points: a one-point line would be invisible.
            ax1.plot(xs, ys, label=k.replace("loss_", "") if k != "loss" else "total",
                     linewidth=2 if k == "loss" else 1, marker="." if len(xs) < 30 else None)
    pts = [(r["step"], r["val_loss"]) for r in evals if r.get("val_loss") is not None]
    if pts:
        xs, ys = zip(*pts)
        ax1.plot(xs, ys, "k--o", label="val total", markersize=3)
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.set_title("losses (weighted total; terms unweighted)")
    if train and all((r.get("loss") or 0) > 0 for r in train):
        ax1.set_yscale("log")
    if ax1.lines:
        ax1.legend(fontsize=7)
    for k in ("gIoU", "cIoU", "N-acc", "T-acc"):
        pts = [(r["step"], r[k]) for r in evals if r.get(k) is not None]
        if pts:
            xs, ys = zip(*pts)
            ax2.plot(xs, ys, "-o", label=k, markersize=3)
    ax2.set_xlabel("step")
    ax2.set_ylabel("%")
    ax2.set_title("validation")
    if ax2.lines:
        ax2.legend(fontsize=7)
    else:
        ax2.text(0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=ax2.transAxes)
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_name(png_path.stem + ".tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, png_path)
    return png_path


__all__ = ["Trainer", "evaluate", "plot_curves", "read_log", "NonFiniteLossError", "build_datasets"]

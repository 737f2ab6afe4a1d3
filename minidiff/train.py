"""Training: the Trainer and the EMA of the weights (TrainConfig and lr_at: train_config.py).

    trainer = Trainer(model, dataset, TrainConfig(steps=2000, batch_size=100), schedule=schedule)
    trainer.fit()                     # or trainer.fit(resume=True) to continue from out_dir/checkpoint.pt

One optimiser step (Ho et al. 2020, Algorithm 1, plus the usual engineering):
    take the next global batch -> split it into shards -> per shard: drop the context with probability
    p (classifier-free guidance, Ho & Salimans 2022), compute the loss under autocast, backpropagate
    -> clip the gradient norm -> AdamW step at lr(step) -> update the EMA weights.

Randomness that makes runs reproducible and resumable bit for bit:
  * data order: a DistributedSampler seeded with `seed`, reshuffled per epoch (seed + epoch); the
    checkpoint records the epoch and the position in it;
  * the noise, the time steps and the context-dropout mask of a step come from a generator seeded
    by (seed, step, shard) alone. A global batch is cut into S = W x A shards (W processes, A
    gradient-accumulation micro-batches); shard s holds the batch's samples s, s + S, s + 2S, ...
    (exactly what DistributedSampler hands rank s % W). So W processes with A micro-batches each
    see the same samples with the same noise as 1 process with W x A micro-batches, and reach the
    same weights up to floating-point summation order (tested with W = 2 on CPU).
  * batch_size is the GLOBAL batch; the learning rate is not rescaled with W (see distributed.py).
"""

from __future__ import annotations

import csv
import math
import os
import re
import signal
import threading
import time
import warnings
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import distributed, imaging
from .file_io import CheckpointError, atomic_write_text, run_folder_lock, write_error
from .losses import diffusion_loss
from .model_table import model_spec
from .rng_state import set_rng_state
from .schedule import NoiseSchedule
from .tensors import per_sample
from .train_config import DECAYS, MIXED_PRECISIONS, OBJECTIVES, TrainConfig, lr_at, native_bf16, resolve_precision  # noqa: F401 (re-exported)

CHECKPOINT_NAME = "checkpoint.pt"
LOSS_CSV_HEADER = ["step", "epoch", "loss", "lr", "images_per_s"]
# What makes two runs the same run: resuming with a different value is refused (see check_same_run).
SAME_RUN_SETTINGS = ("batch_size", "seed", "objective", "prediction_type", "loss_weighting")


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal (SIGINT: Ctrl-C, or SIGTERM) after saving; `signum` says which."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


def _leave_signals_to_the_trainer(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT/SIGTERM (a terminal's Ctrl-C reaches them too): the training
    process finishes its step and saves; the workers end with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _DeferredSignals:
    """While active (main thread only), SIGINT and SIGTERM only set `signum`; the training loop stops at
    the end of the step, with consistent weights to save. A second signal stops at once (no save)."""

    def __init__(self):
        self.signum, self._previous = None, {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise Interrupted(signum, f"interrupted twice (second: {signal.Signals(signum).name}); "
                                      f"the last checkpoint written stands")
        self.signum = signum

    def __enter__(self) -> "_DeferredSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class EMA:
    """An exponential moving average of a model's weights (Polyak averaging); sampling uses it."""

    def __init__(self, model: nn.Module):
        import copy
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        """ema = decay * ema + (1 - decay) * w for every parameter; buffers (BatchNorm stats) are copied."""
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.mul_(decay).add_(p.detach(), alpha=1.0 - decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)


def shard_generator(seed: int, step: int, shard: int) -> torch.Generator:
    """The CPU generator for the noise, times and dropout of one shard of one step (see module docstring)."""
    state = np.random.SeedSequence([seed, step, shard]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


def drop_context(context: Optional[Tensor], p: float, generator: torch.Generator, null_id=None) -> Optional[Tensor]:
    """Replace each sample's context by "no context" with probability p.

    float vectors [B, ...] (one-hot, mixtures) -> zeros; int class ids [B] -> `null_id`; None stays None.
    """
    if context is None or p <= 0:
        return context
    drop = torch.rand(context.shape[0], generator=generator) < p            # [B] bool
    drop = drop.to(context.device)
    if context.is_floating_point():
        return context * per_sample(~drop, context).to(context.dtype)
    if null_id is None:
        raise ValueError("context dropout on integer class ids needs the model's null id "
                         "(a `null_id` or `num_classes` attribute); or set context_dropout=0")
    drop = per_sample(drop, context)                                        # [B, 1, ...]: whole samples
    return torch.where(drop, torch.full_like(context, int(null_id)), context)


def _split(batch):
    """A DataLoader batch -> (images [B, C, H, W], context or None)."""
    if torch.is_tensor(batch):
        return batch, None
    if isinstance(batch, (list, tuple)) and len(batch) >= 1:
        return batch[0], (batch[1] if len(batch) > 1 else None)
    raise ValueError(f"a dataset item must be an image tensor or (image, context), got {type(batch).__name__}")


def _null_id(model: nn.Module):
    return getattr(model, "null_id", getattr(model, "num_classes", None))


def _model_context(model: nn.Module, context: Optional[Tensor]) -> Optional[Tensor]:
    """Integer class ids [B] -> one-hot float [B, n_cfeat] for a float-vector model (ContextUnet); else as is."""
    n_cfeat = getattr(model, "n_cfeat", None)
    if context is None or context.is_floating_point() or not n_cfeat:
        return context
    return torch.nn.functional.one_hot(context.long(), n_cfeat).float()

class Trainer:
    """Trains a diffusion model (objective "diffusion" + NoiseSchedule), a score model ("dsm" + SDE) or a flow
    model ("flow" + flow.RectifiedFlow, passed as sde=).

    model: any network called ``model(x, t, context=None)``. dataset: items ``(image [C, H, W], context)``
    or just ``image``. model_kwargs: the model's constructor kwargs, recorded so checkpoints can rebuild
    it (not needed for a model made by ``checkpoint.build_model``, which remembers them).
    ``fit()`` trains to the configured end; ``train(n)`` takes n more steps; ``save()`` writes a checkpoint.
    on_log: called as ``on_log(step, metrics)`` at every log row (rank 0), metrics
    ``{"loss", "lr", "images_per_s", "epoch"}`` (plain floats); loss.csv and loss.png are written as well.
    loss_fn: replaces the objective's loss, called as ``loss_fn(model, x0, context, generator) -> scalar``
    (distill.ProgressiveDistillationLoss is one); it is not saved, so pass it again to resume.
    """

    def __init__(self, model: nn.Module, dataset, config: Optional[TrainConfig] = None,
                 schedule: Optional[NoiseSchedule] = None, sde=None, model_kwargs: Optional[dict] = None,
                 on_log: Optional[Callable[[int, dict], None]] = None, loss_fn: Optional[Callable] = None):
        self.config = c = config if config is not None else TrainConfig()
        self.loss_fn = loss_fn
        if c.objective == "diffusion" and schedule is None:
            raise ValueError("objective 'diffusion' needs schedule=NoiseSchedule(...)")
        if c.objective == "dsm" and sde is None:
            raise ValueError("objective 'dsm' needs sde=VESDE(...) / VPSDE(...) / SubVPSDE(...)")
        if (c.objective == "flow") != (type(sde).__name__ == "RectifiedFlow"):
            raise ValueError("objective 'flow' goes with sde=RectifiedFlow(...), and RectifiedFlow with "
                             "objective 'flow'")
        if schedule is not None and not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        if len(dataset) == 0:
            raise ValueError("dataset is empty: it needs at least batch_size images")
        self.schedule, self.sde, self.dataset = schedule, sde, dataset
        self.dist = distributed.current()
        self.device = _pick_device(c.device, self.dist)
        if c.mixed_precision == "fp16" and self.device.type != "cuda":
            raise ValueError("mixed_precision='fp16' needs a CUDA device; use 'bf16' or 'no' on the CPU")
        self.precision = resolve_precision(c.mixed_precision, self.device)   # the autocast this run uses
        if c.mixed_precision == "bf16" and not native_bf16(self.device):
            warnings.warn(f"mixed_precision='bf16' on a {self.device.type} without native bfloat16 "
                          f"({_cpu_capability(self.device)}): training runs several times slower than in float32; "
                          f"use mixed_precision='auto' (bf16 only where it is native) or 'no'", stacklevel=2)

        self._check_memory(model, c)                                     # before anything big is allocated
        self.model_spec = model_spec(model, model_kwargs)
        self.model = model.to(self.device)
        if c.objective == "diffusion":        # what the trained network predicts: md.sample, the Stepper and
            self.model.prediction_type = c.prediction_type   # metrics read it off the model (and its EMA copy)
        if c.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.image_shape, self.example_context = self._check_model_takes_data()
        self.ema = EMA(self.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=c.lr, betas=c.adam_betas,
                                           weight_decay=c.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

        world, shards = self.dist.world_size, self.dist.world_size * c.grad_accum_steps
        if c.batch_size % shards:
            raise ValueError(f"batch_size {c.batch_size} must be divisible by processes x grad_accum_steps = {shards}")
        self.local_batch = c.batch_size // world                          # images per process per step
        self.sampler = DistributedSampler(dataset, num_replicas=world, rank=self.dist.rank, shuffle=True,
                                          seed=c.seed, drop_last=True)
        self.steps_per_epoch = len(self.sampler) // self.local_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"the dataset has {len(dataset)} images, fewer than one batch of {c.batch_size}")
        self.total_steps = c.steps if c.steps is not None else c.epochs * self.steps_per_epoch
        self.step = self.epoch = self.batch_in_epoch = 0                  # where training stands
        self.history = []                                                 # [step, loss, lr] per log row
        self.on_log = on_log
        self.tensorboard = None
        if c.tensorboard and c.out_dir is not None and self.dist.is_main:
            from .train_log import TensorBoardLog
            self.tensorboard = TensorBoardLog(os.path.join(c.out_dir, "tensorboard"))

        self.train_model = self.model                                     # what the loss calls
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        if c.compile:
            self.train_model = torch.compile(self.train_model)

    # ------------------------------------------------------------------ one step
    def train_step(self, batch) -> tuple:
        """One optimiser step on a batch from the loader; returns (mean loss over all processes, lr)."""
        import contextlib
        c, world, rank, A = self.config, self.dist.world_size, self.dist.rank, self.config.grad_accum_steps
        x, context = _split(batch)
        x = x.to(self.device, non_blocking=True)
        if c.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        context = _model_context(self.model, context)
        context = context.to(self.device, non_blocking=True) if context is not None else None
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for k in range(A):                                                # micro-batch k is shard k * W + rank
            generator = shard_generator(c.seed, self.step, k * world + rank)
            x_k = x[k::A]                                                  # [B / (W A), C, H, W]
            c_k = drop_context(context[k::A] if context is not None else None, c.context_dropout, generator,
                               _null_id(self.model))
            last = k == A - 1
            sync = contextlib.nullcontext() if last or world == 1 else self.train_model.no_sync()
            with sync:
                with self._autocast():
                    loss = self._loss(x_k, c_k, generator)
                self.scaler.scale(loss / A).backward()
            total += loss.detach().float() / A
        value = distributed.all_reduce_mean(total).item()
        if not math.isfinite(value):
            raise FloatingPointError(f"the loss is {value} at step {self.step + 1}; stopping before the update "
                                     f"(no checkpoint is written with it). Try a lower lr or grad_clip.")

        lr = lr_at(self.step, c, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # Clip (grad_clip None: max norm inf, which only measures). A non-finite norm stops training before
        # the update; under fp16's GradScaler it is expected now and then, and scaler.step skips that step.
        self.scaler.unscale_(self.optimizer)
        max_norm = c.grad_clip if c.grad_clip is not None else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if not self.scaler.is_enabled() and not torch.isfinite(norm):
            raise FloatingPointError(f"the gradient norm is {norm.item()} at step {self.step + 1}; stopping before "
                                     f"the update (no checkpoint is written with it)")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        decay = min(c.ema_decay, (1 + self.step) / (10 + self.step)) if c.ema_warmup else c.ema_decay
        self.ema.update(self.model, decay)
        return value, lr

    def _loss(self, x: Tensor, context: Optional[Tensor], generator: torch.Generator) -> Tensor:
        c = self.config
        if self.loss_fn is not None:
            return self.loss_fn(self.train_model, x, context, generator)
        if c.objective == "diffusion":
            return diffusion_loss(self.train_model, x, self.schedule, c.prediction_type, context,
                                  c.loss_weighting, generator=generator)
        if c.objective == "flow":
            from .losses import flow_loss
            return flow_loss(self.train_model, x, self.sde, context=context, generator=generator)
        from .losses import dsm_loss
        return dsm_loss(self.train_model, x, self.sde, t_min=c.dsm_t_min, context=context, generator=generator)

    def _autocast(self):
        import contextlib
        if self.precision == "no":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    # ------------------------------------------------------------------ the loop
    def _batches(self):
        """Per-process batches from where training stands (epoch, batch_in_epoch), forever."""
        while True:
            self.sampler.set_epoch(self.epoch)                            # shuffle with seed + epoch
            if hasattr(self.dataset, "seed_augmentation"):                # flips: f(seed, epoch, index) alone
                self.dataset.seed_augmentation(self.config.seed, self.epoch)
            indices = list(self.sampler)[self.batch_in_epoch * self.local_batch:
                                         self.steps_per_epoch * self.local_batch]
            loader = DataLoader(self.dataset, batch_size=self.local_batch, sampler=indices, drop_last=True,
                                num_workers=self.config.num_workers, pin_memory=self.device.type == "cuda",
                                worker_init_fn=_leave_signals_to_the_trainer if self.config.num_workers else None)
            iterator = iter(loader)
            try:
                for batch in iterator:
                    self.batch_in_epoch += 1
                    if self.batch_in_epoch == self.steps_per_epoch:
                        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    yield batch
            finally:       # stop the workers now: they ignore SIGTERM, so exit-time cleanup could not end them
                shutdown = getattr(iterator, "_shutdown_workers", None)
                if shutdown is not None:
                    shutdown()

    def fit(self, resume: bool = False) -> "Trainer":
        """Train until the configured end; with resume, first continue from out_dir/checkpoint.pt if it exists
        (after checking that it is this run's: see ``resume_checkpoint``)."""
        checkpoint = self.resume_checkpoint() if resume else None
        if checkpoint is not None:
            self.load_state(checkpoint)
        return self.train(max(0, self.total_steps - self.step))

    def train(self, steps: int) -> "Trainer":
        """Take `steps` more optimiser steps, logging, sampling and checkpointing as configured.

        While it runs, the process holds the lock on out_dir (one folder, one trainer), and SIGINT
        (Ctrl-C) or SIGTERM end the current step, write a checkpoint, then raise ``Interrupted``.
        """
        import contextlib
        c, main = self.config, self.dist.is_main
        end, start = self.step + steps, self.step
        with contextlib.ExitStack() as stack:
            if c.out_dir is not None and main:
                stack.enter_context(run_folder_lock(c.out_dir))
                self.check_checkpoint_path()
                self._trim_loss_csv()
            signals = stack.enter_context(_DeferredSignals())
            batches = self._batches()
            bar = tqdm(total=end, initial=self.step, desc="train", disable=not (c.progress and main),
                       dynamic_ncols=True)
            stack.callback(bar.close)
            window, window_start = [], time.perf_counter()
            self.model.train()
            while self.step < end:
                try:
                    loss, lr = self.train_step(next(batches))
                except RuntimeError as error:                 # DDP's gradient all-reduce in backward
                    if self.dist.enabled and distributed.is_collective_failure(error):
                        raise distributed.lost_contact(error) from None
                    raise
                window.append(loss)
                seconds = time.perf_counter() - window_start
                images_per_s = len(window) * c.batch_size / max(seconds, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.0f}", refresh=False)
                if self.step % c.log_every == 0 or self.step == end:
                    self._log(float(np.mean(window)), lr, images_per_s)
                    window, window_start = [], time.perf_counter()
                if self._stop_requested(signals):
                    self._save_and_stop(signals.signum, saved=self.step > start)
                writes = c.out_dir is not None                # out_dir None: train in memory, write nothing
                if writes and c.sample_every and self.step % c.sample_every == 0 and self.step != end:
                    self.sample_grid()
                if writes and c.checkpoint_every and self.step % c.checkpoint_every == 0 and self.step != end:
                    self.save()
            if c.out_dir is not None and steps > 0:
                self.save()
                if signals.signum is not None:                 # this process only: no collective here
                    self._save_and_stop(signals.signum, saved=False, finished=True)
                if c.sample_every:
                    self.sample_grid()
        return self

    def _stop_requested(self, signals: "_DeferredSignals") -> bool:
        """Whether SIGINT/SIGTERM reached any process (all of them agree, so they stop at the same step)."""
        flag = signals.signum if signals.signum is not None else 0
        if self.dist.enabled:
            flag = distributed.max_over_ranks(flag, self.device)
            signals.signum = signals.signum or (flag or None)
        return bool(flag)

    def _save_and_stop(self, signum: int, saved: bool, finished: bool = False) -> None:
        """Write a checkpoint of the finished steps (when there are new ones), then raise Interrupted."""
        import signal as signal_module
        name = signal_module.Signals(signum).name
        path = self.checkpoint_path()
        if path is not None and (saved or finished):
            if saved:
                self.save()
            what = f"saved {path} at step {self.step}; continue with --resume (Trainer.fit(resume=True))"
        elif path is not None:
            what = f"no step finished since the start; {path} is unchanged"
        else:
            what = "nothing saved (TrainConfig.out_dir is None)"
        raise Interrupted(signum, f"interrupted by {name} at step {self.step}; {what}")

    def check_checkpoint_path(self) -> None:
        """Refuse up front a checkpoint path that a save could never write (a folder in its place)."""
        path = self.checkpoint_path()
        if path is not None and os.path.lexists(path) and not os.path.isfile(path):
            raise IsADirectoryError(f"{path} exists but is not a file, so no checkpoint could be saved there; "
                                    f"remove it or choose another output folder")

    def _trim_loss_csv(self) -> None:
        """Keep only loss.csv rows up to the step training stands at: a resumed (or restarted) run never
        repeats a step's row. Unreadable rows (a write cut short) go too."""
        path = os.path.join(self.config.out_dir, "loss.csv")
        if not os.path.isfile(path):
            return
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        keep = [row for row in rows[1:] if len(row) == len(LOSS_CSV_HEADER) and row[0].isdigit()
                and int(row[0]) <= self.step]
        if rows[:1] != [LOSS_CSV_HEADER] or len(keep) != len(rows) - 1:
            lines = [LOSS_CSV_HEADER] + keep
            atomic_write_text("".join(",".join(row) + "\n" for row in lines), path)

    def _log(self, loss: float, lr: float, images_per_s: float) -> None:
        self.history.append([self.step, loss, lr])
        if not self.dist.is_main:
            return
        metrics = {"loss": loss, "lr": lr, "images_per_s": images_per_s, "epoch": self.epoch}
        if self.on_log is not None:
            self.on_log(self.step, metrics)
        if self.tensorboard is not None:
            self.tensorboard.scalars(self.step, metrics)
        if self.config.out_dir is None:
            return
        os.makedirs(self.config.out_dir, exist_ok=True)
        path = os.path.join(self.config.out_dir, "loss.csv")
        new = not os.path.isfile(path)
        try:
            with open(path, "a", newline="") as f:
                writer = csv.writer(f)
                if new:
                    writer.writerow(LOSS_CSV_HEADER)
                writer.writerow([self.step, self.epoch, f"{loss:.6g}", f"{lr:.6g}", f"{images_per_s:.1f}"])
        except OSError as error:
            raise write_error(path, error, "the rows written before are kept") from None
        steps, losses = [row[0] for row in self.history], [row[1] for row in self.history]
        imaging.save_loss_curve(steps, losses, os.path.join(self.config.out_dir, "loss.png"))

    # ------------------------------------------------------------------ samples
    @torch.no_grad()
    def sample_grid(self, path: Optional[str] = None):
        """Sample with the EMA weights: one row per class (up to 10) or 8 unconditional rows. Returns [N, C, H, W]."""
        c, m, context = self.config, self.config.samples_per_class, self.example_context
        labels = None
        if context is not None and context.is_floating_point():           # one-hot vectors [K]
            k = min(context.shape[-1], 10)
            contexts = torch.eye(context.shape[-1])[:k].repeat_interleave(m, 0)
            labels = self._class_names(k)
        elif context is not None:                                        # integer class ids
            k = min(int(_null_id(self.model) or 10), 10)
            contexts, labels = torch.arange(k).repeat_interleave(m), self._class_names(k)
        shape = ((len(labels) if labels else 8) * m, *self.image_shape)
        generator = torch.Generator().manual_seed(c.seed)
        contexts = contexts.to(self.device) if context is not None else None
        if c.objective == "diffusion":
            from .samplers import sample
            x = sample(self.ema.model, self.schedule, shape, sampler="ddim", steps=min(c.sample_steps, self.schedule.T),
                       context=contexts, prediction_type=c.prediction_type, generator=generator, progress=False)
        elif c.objective == "flow":
            from .flow import flow_sample
            x = flow_sample(self.ema.model, self.sde, shape, steps=c.sample_steps, context=contexts,
                            generator=generator)
        else:
            from .sde_samplers import sde_sample
            x = sde_sample(self.ema.model, self.sde, shape, steps=c.sample_steps, context=contexts,
                           generator=generator, progress=False)
        if path is None and c.out_dir is not None:
            path = os.path.join(c.out_dir, "samples", f"step_{self.step:06d}.png")
        if path is not None and self.dist.is_main:
            if labels:
                imaging.save_class_grid(x.reshape(len(labels), m, *self.image_shape), labels, path)
            else:
                imaging.save_image_grid(x, path, nrow=m)
        if self.tensorboard is not None:
            self.tensorboard.grid(self.step, x, nrow=m)
        return x

    def _class_names(self, k: int) -> list:
        names = self.dataset_class_names()
        return [str(names[i]) if names is not None and i < len(names) else str(i) for i in range(k)]

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_path(self) -> Optional[str]:
        return os.path.join(self.config.out_dir, CHECKPOINT_NAME) if self.config.out_dir is not None else None

    def dataset_class_names(self) -> Optional[list]:
        """The dataset's class names (``classes``, as in torchvision, or ``class_names``), or None."""
        names = getattr(self.dataset, "classes", None) or getattr(self.dataset, "class_names", None)
        return [str(name) for name in names] if names is not None else None

    def state_dict(self) -> dict:
        """Everything needed to continue bit for bit, as a checkpoint dict (see checkpoint.py).

        Also what the data was (``data["source"]``: its class, and its folder when it has one), so
        that ``minidiff eval`` never measures the model against other data, and the class names."""
        source = self._data_source()
        return ckpt.make_checkpoint(
            self.model, model_kwargs=self.model_spec["kwargs"], schedule=self.schedule, sde=self.sde,
            ema_model=self.ema.model, optimizer=self.optimizer, grad_scaler=self.scaler, step=self.step,
            data={"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "history": self.history,
                  "source": source},
            train_config=self.config.to_dict(),
            class_names=self.dataset_class_names() if self.example_context is not None else None,
            sample_shape=self.image_shape)

    def save(self, path: Optional[str] = None) -> Optional[str]:
        """Write a checkpoint (rank 0 only) to `path` or out_dir/checkpoint.pt; never with non-finite weights."""
        path = path if path is not None else self.checkpoint_path()
        if path is None:
            raise ValueError("save() needs a path when TrainConfig.out_dir is None")
        if self.dist.is_main:
            state = self.state_dict()
            ckpt.write_checkpoint(path, state)
            if self.config.keep_last and self.config.out_dir is not None:
                self._write_milestone(state)
        return path

    def _write_milestone(self, state: dict) -> None:
        """out_dir/checkpoints/step_NNNNNN.pt, keeping only the newest `keep_last` of them."""
        folder = os.path.join(self.config.out_dir, "checkpoints")
        ckpt.write_checkpoint(os.path.join(folder, f"step_{self.step:06d}.pt"), state)
        milestones = sorted((name for name in os.listdir(folder) if re.fullmatch(r"step_\d+\.pt", name)),
                            key=lambda name: int(name[5:-3]))
        for name in milestones[:-self.config.keep_last]:
            os.remove(os.path.join(folder, name))

    def resume_checkpoint(self) -> Optional[dict]:
        """out_dir/checkpoint.pt, validated and checked to belong to this run (``check_same_run``), or None
        when there is none yet. Nothing is written: call it before touching the run folder."""
        path = self.checkpoint_path()
        if path is None or not os.path.lexists(path):
            return None
        self.check_checkpoint_path()
        checkpoint = ckpt.load_checkpoint(path)
        ckpt.validate_checkpoint(checkpoint, path, training=True)
        self.check_same_run(checkpoint, path)
        return checkpoint

    def check_same_run(self, checkpoint: dict, path: str = "the checkpoint") -> None:
        """ValueError naming the first difference between this run and the one that wrote `checkpoint`:
        the model (class and constructor arguments), the schedule or SDE, the data, and the settings that
        decide what a step computes (SAME_RUN_SETTINGS: the batch size, the seed, the objective...)."""
        def refuse(what, theirs, ours):
            raise ValueError(f"cannot resume from {path}: it was trained with {what} {theirs}, this run has "
                             f"{ours}; resume with the same settings, or choose another output folder")

        spec, theirs = self.model_spec, checkpoint["model"]
        if theirs["class"] != spec["class"]:
            refuse("model", theirs["class"], spec["class"])
        if theirs.get("kwargs") is not None and spec["kwargs"] is not None:
            for key in sorted(set(theirs["kwargs"]) | set(spec["kwargs"])):
                if theirs["kwargs"].get(key) != spec["kwargs"].get(key):
                    refuse(f"model {key} =", theirs["kwargs"].get(key), spec["kwargs"].get(key))
        schedule = self.schedule.to_config() if self.schedule is not None else None
        if (checkpoint.get("schedule") is None) != (schedule is None):
            refuse("a", "schedule" if schedule is None else "SDE", "an SDE" if schedule is None else "a schedule")
        if schedule is not None:
            their_betas, our_betas = checkpoint["schedule"]["betas"], schedule["betas"]
            if len(their_betas) != len(our_betas):
                refuse("schedule T =", len(their_betas), f"T = {len(our_betas)}")
            if not torch.allclose(torch.tensor(their_betas, dtype=torch.float64),
                                  torch.tensor(our_betas, dtype=torch.float64), rtol=1e-6, atol=0):
                refuse("a schedule of other betas", f"(beta_1 = {their_betas[0]:g}, beta_T = {their_betas[-1]:g})",
                       f"beta_1 = {our_betas[0]:g}, beta_T = {our_betas[-1]:g}")
        if self.sde is not None and checkpoint.get("sde") != self.sde.to_config():
            refuse("SDE", checkpoint.get("sde"), self.sde.to_config())
        their_config, ours = checkpoint.get("train_config") or {}, self.config.to_dict()
        for key in SAME_RUN_SETTINGS:
            if key in their_config and their_config[key] != ours.get(key):
                refuse(f"{key} =", their_config[key], ours.get(key))
        their_source, our_source = (checkpoint.get("data") or {}).get("source") or {}, self._data_source()
        for key in ("class", "root", "size"):
            if key in their_source and their_source[key] != our_source.get(key):
                refuse(f"data {key} =", their_source[key], our_source.get(key))

    def _data_source(self) -> dict:
        """What the data is: the dataset's class, its folder when it has one, its number of items."""
        source = {"class": type(self.dataset).__name__, "size": len(self.dataset)}
        if isinstance(getattr(self.dataset, "root", None), str):
            source["root"] = os.path.abspath(self.dataset.root)
        return source

    def load_state(self, checkpoint: dict) -> None:
        """Continue from a checkpoint dict written by ``save`` (weights, EMA, optimiser, step, data order, RNG)."""
        ckpt.validate_checkpoint(checkpoint, "checkpoint", training=True)
        name = checkpoint["model"]["class"]
        if name != type(self.model).__name__:
            raise CheckpointError(f"the checkpoint holds a {name}, not a {type(self.model).__name__}")
        for entry, target, weights in (("state_dict", self.model, checkpoint["state_dict"]),
                                       ("ema_state_dict", self.ema.model,
                                        checkpoint["ema_state_dict"] or checkpoint["state_dict"]),
                                       ("optimizer", self.optimizer, checkpoint.get("optimizer")),
                                       ("grad_scaler", self.scaler, checkpoint.get("grad_scaler"))):
            if weights is None:
                continue
            try:
                target.load_state_dict(weights)
            except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as error:
                raise CheckpointError(f"the checkpoint's {entry!r} does not fit this run's "
                                      f"{type(target).__name__}: {ckpt.weights_mismatch(error)}") from None
        self.step = int(checkpoint["step"])
        data = checkpoint.get("data") or {}
        self.epoch, self.batch_in_epoch = int(data.get("epoch", 0)), int(data.get("batch_in_epoch", 0))
        self.history = [list(row) for row in data.get("history", [])]
        set_rng_state(checkpoint["rng"])

    @classmethod
    def resume(cls, path: str, dataset, model_classes: Optional[dict] = None, **config_changes) -> "Trainer":
        """A Trainer rebuilt from the checkpoint at `path` alone (model, schedule/SDE, config), ready to go on."""
        checkpoint = ckpt.load_checkpoint(path)
        model = ckpt.model_from_checkpoint(checkpoint, ema=False, classes=model_classes, path=os.fspath(path))
        try:
            config = TrainConfig.from_dict({**(checkpoint.get("train_config") or {}), **config_changes})
        except (ValueError, TypeError) as error:
            if config_changes:                                # perhaps the caller's change: name both
                raise ValueError(f"{os.fspath(path)}: the recorded train_config with {config_changes}: {error}") \
                    from None
            raise CheckpointError(f"{os.fspath(path)}: damaged checkpoint: 'train_config': {error}") from None
        process = ckpt.schedule_or_sde_from_checkpoint(checkpoint)
        schedule, sde = (process, None) if isinstance(process, NoiseSchedule) else (None, process)
        trainer = cls(model.train(), dataset, config, schedule=schedule, sde=sde)
        trainer.load_state(checkpoint)
        return trainer

    # ------------------------------------------------------------------ checks
    def _check_memory(self, model: nn.Module, c: TrainConfig) -> None:
        """The memory a step (and a sample grid) needs, estimated on the meta device, within limits.memory_limit."""
        from . import limits
        x, context = _split(self.dataset[0])
        x = torch.as_tensor(x)
        context = _model_context(model, torch.as_tensor(context)) if context is not None else None
        micro_batch = max(1, c.batch_size // (self.dist.world_size * c.grad_accum_steps))
        limits.check_training_memory(model, tuple(x.shape), context, micro_batch, self.device,
                                     what=f"TrainConfig.batch_size {c.batch_size}")
        if c.sample_every or c.tensorboard:
            limits.check_sampling_memory(model, 10 * c.samples_per_class, tuple(x.shape), context, self.device,
                                         name="TrainConfig.samples_per_class")

    def _check_model_takes_data(self):
        """One forward pass on dataset[0]: a clear error now instead of a shape error deep in step 1."""
        x, context = _split(self.dataset[0])
        x = torch.as_tensor(x)
        context = _model_context(self.model, torch.as_tensor(context)) if context is not None else None
        batch_context = context[None].to(self.device) if context is not None else None
        t = torch.ones(1, device=self.device)
        self.model.eval()
        try:
            with torch.no_grad():
                out = self.model(x[None].to(self.device), t, batch_context)
        except (RuntimeError, ValueError) as error:
            raise ValueError(f"{type(self.model).__name__} cannot take this dataset's images of shape "
                             f"{tuple(x.shape)}: {str(error).splitlines()[0]}") from None
        finally:
            self.model.train()
        if tuple(out.shape[1:]) != tuple(x.shape):
            raise ValueError(f"{type(self.model).__name__} maps images of shape {tuple(x.shape)} to "
                             f"{tuple(out.shape[1:])}; a diffusion model must return the input's shape")
        return tuple(x.shape), context


def _pick_device(name: str, info: distributed.DistributedInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = parse_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank if info.enabled else torch.cuda.current_device())
    return device


def parse_device(name) -> torch.device:
    """torch.device(name), with errors that name the setting: an unknown type, or CUDA where there is none."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N' (or another torch device), "
                         f"got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asks for CUDA, but torch.cuda.is_available() is False here; use 'cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: there are only {torch.cuda.device_count()} CUDA devices")
    return device


def _cpu_capability(device: torch.device) -> str:
    """The CPU's vector capability as torch reports it ("AVX2", "AVX512", ...), or the CUDA device's name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return torch.backends.cpu.get_cpu_capability()

"""The training loop: one ``Trainer`` for every detector that follows the model contract.

``Trainer(config, model, train_set, val_set).fit()`` trains with the config's recipe (SGD/AdamW,
warm-up + cosine or step schedule, EMA, clipping, AMP, gradient accumulation, DDP), evaluates the
EMA weights, keeps ``last.pt``/``best.pt`` checkpoints, and at the end writes ``weights.safetensors``
(+ ``weights.json``), ``metrics.json``, ``curves.png`` and ``predictions.png`` into ``config.out``.

The run's plan: the number of optimizer steps is known from ``epochs`` / ``max_steps``; for a
``max_minutes`` budget it is estimated from the measured step time after the first
:data:`CALIBRATION_STEPS` steps. The recipe values left open by the auto recipe (EMA decay,
BatchNorm momentum, evaluation interval, augmentation through ``on_plan``) are set from it then
(:mod:`scaledet.engine.recipe`); the schedule itself follows progress, so a run of any length
completes its warm-up and anneals.

Datasets yield ``(image float[3,H,W] in [0,1], target dict(boxes xyxy float pixels, labels int64,
image_id, ...))``; the model is called as ``model(images, targets) -> dict`` of losses (``"loss"``
is the total) in training and ``model(images) -> list[dict(boxes, scores, labels)]`` in eval.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from scaledet.data.transforms import collate_fn
from scaledet.engine import distributed as dist_utils
from scaledet.engine.distributed import resolve_device
from scaledet.engine.allocator import keep_freed_memory
from scaledet.engine.checkpoint import (atomic_torch_save, check_resume, load_training_checkpoint,
                                        remove_stale_temporaries, resume_path, rng_state, set_rng_state)
from scaledet.engine.config import TrainConfig
from scaledet.engine.data import EpochSampler, SeededDataset
from scaledet.engine.ema import create_ema, set_ema_decay
from scaledet.engine.evaluate import STAT_KEYS, evaluate
from scaledet.engine.logging import RunLogger, read_log
from scaledet.engine.plots import plot_curves, plot_predictions
from scaledet.engine.recipe import PlanValues, configure_threads, eval_interval, plan_values
from scaledet.engine.schedule import LRSchedule
from scaledet.errors import UserError
from scaledet.evaluation.results import is_placeholder_name, label_mapping
from scaledet.models.base import default_param_groups
from scaledet.weights import save_weights

StepCallback = Callable[["Trainer", dict[str, Any]], None]
PlanCallback = Callable[["Trainer", PlanValues], None]

#: optimizer steps timed (after the first two) to estimate how many steps a time budget allows
CALIBRATION_STEPS = 8
_PROVISIONAL_EMA_DECAY = 0.999  # until the plan is known the EMA's own warm-up, (1+n)/(10+n), is lower anyway


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators: call before building the model, so that the
    same seed and settings give the same initial weights and the same run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _ignore_ctrl_c(worker_id: int) -> None:
    """A data-loading worker ignores Ctrl-C: a terminal sends it to the whole process group, and a worker
    that ended on it would fail the step :meth:`Trainer.fit` finishes before it saves (the main process
    ends the workers when it stops)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _warn_if_replacing(out: Path) -> None:
    """Warn when ``out`` holds another run's weights or checkpoint, which this run will replace."""
    found = [name for name in ("weights.safetensors", "last.pt") if (out / name).exists()]
    if found:
        steps = ""
        if (out / "metrics.json").exists():
            with contextlib.suppress(ValueError, OSError):
                steps = f" of {json.loads((out / 'metrics.json').read_text()).get('steps', '?')} steps"
        warnings.warn(f"{out} holds an earlier run{steps} ({', '.join(found)}): this run replaces it; --resume "
                      "continues it instead, another --out keeps both", stacklevel=3)


def check_model_and_data(config: TrainConfig, model: nn.Module, dataset: Dataset) -> None:
    """What :class:`Trainer` cannot apply itself, checked where it is given (the Python API; ``scaledet train``
    and :func:`~scaledet.engine.run.train_from_config` build the model and the pipeline from the config):
    ValueError for a config made for another model (its recipe: lr, EMA, schedule) or another input size;
    a warning for a training set without a pipeline (no flip, no scale jitter: ``config.augment`` unused).
    A model named only by placeholders (``class_0`` ...) takes the training set's class names."""
    name = getattr(model, "name", None)
    if isinstance(name, str) and name != config.model:
        raise ValueError(f"the config is for {config.model} and the model is {name}: the recipe (lr, EMA, schedule) "
                         f"is chosen per model; make it with TrainConfig.for_model({name!r}, ...)")
    size = getattr(model, "image_size", None)  # (h, w); an int option sets h (DETR: the shorter side, w from it)
    wanted = config.image_size
    if wanted is not None and size is not None and (
            tuple(size)[0] != wanted if isinstance(wanted, int) else tuple(size) != tuple(wanted)):
        raise ValueError(f"config.image_size {config.image_size} but the model was built for {tuple(size)}: the input "
                         "size is the model's; build it with that size (or leave image_size unset)")
    if getattr(dataset, "transforms", False) is None:
        warnings.warn("the training set has no transforms: its images go in unaugmented (no flip or scale jitter, "
                      "config.augment unused); train_from_config(config, train_set, val_set, model) gives it the "
                      "recipe's pipeline", stacklevel=3)
    names, data_names = getattr(model, "class_names", None), getattr(dataset, "class_names", None)
    if (names is not None and data_names is not None and len(names) == len(data_names)
            and all(is_placeholder_name(str(n)) for n in names)):
        model.class_names = [str(n) for n in data_names]


def check_val_classes(model: nn.Module, val_set: Dataset) -> None:
    """Fail before training, not at the first evaluation, when the validation set's classes cannot be matched to
    the model's by name (:func:`~scaledet.evaluation.results.label_mapping`'s errors: no shared name, a repeated
    name); its warnings (classes one side lacks) come with each evaluation."""
    names, val_names = getattr(model, "class_names", None), getattr(val_set, "class_names", None)
    if names is not None and val_names is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            label_mapping(list(names), list(val_names))


def adopt_category_ids(model: nn.Module, dataset: Dataset) -> bool:
    """Give ``model`` the training set's category ids when it was built without its own (the default
    1..K) for the dataset's class names in the dataset's order, so its weights and results files carry
    the ids of the data (COCO 3, 5, 7, ...), as ``scaledet train`` builds it. True if changed."""
    ids = getattr(dataset, "label_to_category_id", None)
    if ids is None or not hasattr(model, "category_ids") or list(getattr(model, "class_names", [])) != list(
            getattr(dataset, "class_names", [])):
        return False
    if list(model.category_ids) != list(range(1, len(ids) + 1)) or list(ids) == list(model.category_ids):
        return False
    model.category_ids = [int(i) for i in ids]
    return True


def build_param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """Optimizer parameter groups: ``model.param_groups(lr, weight_decay, backbone_lr)`` (every
    :class:`~scaledet.models.base.Detector` has it; DETR puts its backbone at lr / 10), else, for
    plain modules, :func:`~scaledet.models.base.default_param_groups` (biases and norm weights
    without weight decay, ``backbone.*`` at ``config.backbone_lr`` when it is set)."""
    param_groups = getattr(model, "param_groups", None)
    if callable(param_groups):
        return list(param_groups(config.lr, config.weight_decay, config.backbone_lr))
    return default_param_groups(model, config.lr, config.weight_decay, config.backbone_lr)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (with ``config.momentum``) or AdamW over :func:`build_param_groups`; the fused kernel
    (one pass over all parameters) where PyTorch has one for them: on CPU it replaces the per-tensor
    loop PyTorch uses there by default (D0 at 256 px, batch 8, 2 threads: the AdamW step takes 8.8 ms
    fused instead of 29.9 ms, of a ~950 ms training step)."""
    groups = build_param_groups(model, config)
    params = [p for group in groups for p in group["params"]]
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                               fused=fused or None)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay, fused=fused or None)


class Trainer:
    """Trains ``model`` on ``train_set``; evaluates on ``val_set`` (optional).

    Args:
        config: the run's :class:`TrainConfig` (recipe fields already resolved).
        model: a detector following the model contract (on CPU; moved to the device here).
        train_set / val_set: datasets of ``(image, target)``; ``val_set`` images are given to the
            model as they come (the model resizes), boxes are compared in those pixels.
        callbacks: called as ``fn(trainer, record)`` after every optimizer step (tests, logging).
        on_plan: called as ``fn(trainer, plan)`` once the run's length is known (at start, or after
            calibration for a time budget); ``scaledet.engine.run`` sets the augmentation there.
    """

    def __init__(
        self,
        config: TrainConfig,
        model: nn.Module,
        train_set: Dataset,
        val_set: Dataset | None = None,
        callbacks: list[StepCallback] | None = None,
        on_plan: list[PlanCallback] | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self.out = Path(config.out)
        self.device = resolve_device(config.device)
        self.distributed = dist_utils.init_from_env(self.device)
        self.is_main = dist_utils.is_main()
        self.callbacks = list(callbacks or [])
        self.on_plan = list(on_plan or [])
        self.train_set, self.val_set = train_set, val_set
        if self.device.type == "cpu":
            configure_threads(config.threads)
            if config.keep_freed_memory:
                keep_freed_memory()
        self._setup_determinism()
        check_model_and_data(config, model, train_set)
        adopt_category_ids(model, train_set)
        if val_set is not None:
            check_val_classes(model, val_set)
        self.model = self._prepare_model(model)
        self.optimizer = build_optimizer(self.model, config)
        self.schedule = LRSchedule(
            kind=config.schedule, warmup_factor=config.warmup_factor, min_ratio=config.min_lr_ratio,
            drop_at=config.lr_drop_at, warmup_fraction=config.warmup_fraction or 0.0,
        )
        ema_decay = _PROVISIONAL_EMA_DECAY if config.ema_decay is None else config.ema_decay
        self.ema = create_ema(self.model, ema_decay) if ema_decay else None
        self.ddp_model = self._wrap_ddp(self.model)
        if hasattr(train_set, "decode_shrunk") and train_set.decode_scale is None:  # files far larger than the
            train_set.decode_shrunk()  # input decode shrunk (a rule the caller set stays)
        if self.config.image_cache_gb > 0 and hasattr(train_set, "cache_images"):
            train_set.cache_images(int(self.config.image_cache_gb * 2**30))
        self.loader, self.sampler = self._build_loader(train_set)
        self.steps_per_epoch = len(self.loader) // config.grad_accum
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the training set has {len(train_set)} samples: fewer than one optimizer step of "
                f"batch_size {config.batch_size} x grad_accum {config.grad_accum} x {dist_utils.world_size()} ranks"
            )
        if config.warmup_epochs is not None:
            self.schedule.warmup_steps = int(round(config.warmup_epochs * self.steps_per_epoch))
        # exact length from epochs, else max_steps (None for a pure time budget); with epochs given,
        # max_steps only interrupts the run (a later --resume continues the same plan)
        self.planned_steps = config.epochs * self.steps_per_epoch if config.epochs else config.max_steps
        if config.epochs and config.max_steps and config.max_steps < self.planned_steps and self.is_main:
            warnings.warn(f"--max-steps {config.max_steps} stops the run before the {self.planned_steps} steps of "
                          f"--epochs {config.epochs}, which the schedule is planned for: it ends un-annealed (the lr "
                          "near its peak); give one of the two to plan the run to its end", stacklevel=2)
        self.plan: PlanValues | None = None  # set by _set_plan
        self.eval_every = config.eval_every
        self._calibration_start: tuple[int, float] | None = None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self._amp_dtype() == torch.float16)
        # progress counters (restored by resume)
        self.epoch = 0
        self.step = 0
        self.batch_in_epoch = 0  # micro-batches of the current epoch already trained
        self.bad_batches = 0
        self.best_ap = -1.0
        self.elapsed_before = 0.0
        self._start: float | None = None
        self.last_stats: dict[str, float] | None = None
        self.max_dets: list[int] = [1, 10, 100]  # the caps of the last evaluation (raised for dense images)
        self._stats_step = -1
        self._records: list[tuple[int, int, dict[str, torch.Tensor]]] = []
        self._ctrl_c_waits = False  # training, outside evaluations: a first Ctrl-C waits for the step's end (fit)
        self.interrupted = False  # a Ctrl-C asked the steps to stop; fit saves last.pt and raises KeyboardInterrupt
        if self.planned_steps and not config.max_minutes:
            self._set_plan(self.planned_steps)
        if self.is_main and not config.resume:
            _warn_if_replacing(self.out)
        self.logger = self._open_logger()
        if config.resume:
            self.load(resume_path(self.out, config.resume))

    # ---- set-up ---------------------------------------------------------------------------

    def _open_logger(self) -> RunLogger:
        """The run's logger (rank 0 locks and writes the output folder). Under DDP every rank learns
        whether rank 0 could, so that a folder in use ends all of them with rank 0's one-line error,
        not the others with a broken collective's traceback."""
        failure: Exception | None = None
        try:
            logger = RunLogger(self.out, tensorboard=self.config.tensorboard, enabled=self.is_main,
                               append=bool(self.config.resume))
        except (UserError, OSError) as error:
            failure = error
        if dist_utils.any_rank(failure is not None, self.device) and failure is None:
            raise SystemExit(2)  # rank 0 reports why
        if failure is not None:
            raise failure
        if self.is_main:
            remove_stale_temporaries(self.out)  # the lock is ours: no other save is under way
        return logger

    def _setup_determinism(self) -> None:
        seed_everything(self.config.seed)
        if self.config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

    # ---- the plan ---------------------------------------------------------------------------

    def _set_plan(self, steps: int) -> None:
        """Fix the run's planned length and the recipe values that depend on it (auto recipe:
        EMA decay, BatchNorm momentum, evaluation interval; ``on_plan`` callbacks: augmentation).
        Values the config sets explicitly are kept."""
        self.plan = plan_values(steps)
        if self.config.recipe == "auto":
            if self.config.ema_decay is None and self.ema is not None:
                set_ema_decay(self.ema, self.plan.ema_decay)
            if self.config.bn_momentum is None:
                self._set_bn_momentum(self.plan.bn_momentum)
        if self.eval_every is None:
            self.eval_every = eval_interval(self.plan.steps / self.steps_per_epoch)
        for callback in self.on_plan:
            callback(self, self.plan)
        if self.is_main:
            ema = getattr(getattr(self.ema, "multi_avg_fn", None), "decay", 0.0) if self.ema is not None else 0.0
            batch = self.config.batch_size * self.config.grad_accum * dist_utils.world_size()
            about = "about " if self.config.max_minutes and self.plan.steps != self.planned_steps else ""  # estimated
            print(f"plan: {about}{self.plan.steps} optimizer steps ({self.plan.steps / self.steps_per_epoch:.1f} "
                  f"epochs of {self.steps_per_epoch}) of {batch} images, lr {self.config.lr:g}, "
                  + (f"EMA decay {ema:.4f}, " if ema else "EMA off, ")
                  + ("no evaluation (no --val)" if self.val_set is None
                     else f"evaluation every {self.eval_every} epoch(s)" if self.eval_every else "evaluation at the end"))

    def planned_epochs(self) -> float | None:
        """The run's planned length in epochs (``None`` until known)."""
        return self.plan.steps / self.steps_per_epoch if self.plan is not None else None

    def _calibrate(self) -> None:
        """For a time budget: after :data:`CALIBRATION_STEPS` timed steps, estimate how many steps
        the budget allows (the first two steps, slower while memory is allocated, are not timed)."""
        if self.plan is not None or not self.config.max_minutes:
            return
        if self._calibration_start is None:
            if self.step >= 2:
                self._calibration_start = (self.step, self.elapsed())
            return
        first_step, first_time = self._calibration_start
        timed = self.step - first_step
        if timed < CALIBRATION_STEPS:
            return
        seconds_per_step = (self.elapsed() - first_time) / timed
        left = max(60 * self.config.max_minutes - self.elapsed(), 0.0)
        estimate = self.step + int(left / max(seconds_per_step, 1e-9))
        estimate = int(dist_utils.all_reduce_mean({"steps": float(estimate)}, self.device)["steps"])
        self._set_plan(min(estimate, self.planned_steps) if self.planned_steps else estimate)

    def _set_bn_momentum(self, momentum: float) -> None:
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = momentum

    def _prepare_model(self, model: nn.Module) -> nn.Module:
        if self.config.sync_bn and self.distributed:
            if self.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            elif self.is_main:
                warnings.warn("sync_bn needs CUDA (PyTorch's SyncBatchNorm is GPU-only); using per-rank BatchNorm")
        if self.config.bn_momentum is not None:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.momentum = self.config.bn_momentum
        model = model.to(self.device)
        if self._use_channels_last():
            model = model.to(memory_format=torch.channels_last)
        return model

    def _use_channels_last(self) -> bool:
        """``config.channels_last``; unset: on for CPU fp32 training, where it made a D0 training
        step 1.35x faster on AVX-512 and AVX2 alike, off with AMP (bf16 depthwise convolutions in
        channels_last fell to a path 8x slower) and on CUDA (not measured)."""
        if self.config.channels_last is not None:
            return self.config.channels_last
        return self.device.type == "cpu" and not self.config.amp

    def _wrap_ddp(self, model: nn.Module) -> nn.Module:
        if not self.distributed:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def _build_loader(self, dataset: Dataset) -> tuple[DataLoader, EpochSampler]:
        sampler = EpochSampler(len(dataset), self.config.seed, dist_utils.world_size(), dist_utils.rank())
        generator = torch.Generator().manual_seed(self.config.seed)
        loader = DataLoader(
            SeededDataset(dataset, self.config.seed), batch_size=self.config.batch_size, sampler=sampler,
            num_workers=self.config.workers, collate_fn=collate_fn, drop_last=True, generator=generator,
            persistent_workers=False, pin_memory=self.device.type == "cuda", worker_init_fn=_ignore_ctrl_c,
        )
        return loader, sampler

    def _amp_dtype(self) -> torch.dtype | None:
        if not self.config.amp:
            return None
        return torch.float16 if self.device.type == "cuda" else torch.bfloat16

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = self._amp_dtype()
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    # ---- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (tensors and plain containers only)."""
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": self.batch_in_epoch,
            "bad_batches": self.bad_batches,
            "best_ap": self.best_ap,
            "elapsed": self.elapsed(),
            "plan_steps": self.plan.steps if self.plan is not None else None,
            "world_size": dist_utils.world_size(),
            "rng": rng_state(),
            "config": json.loads(json.dumps(self.config.to_dict())),
            "model_config": json.loads(json.dumps(getattr(self.model, "config", {}))),
        }

    def save(self, name: str = "last.pt") -> Path | None:
        """Atomically write ``OUT/name`` (rank 0 only)."""
        if not self.is_main:
            return None
        return atomic_torch_save(self.state_dict(), self.out / name)

    def load(self, path: Path) -> None:
        """Continue from a checkpoint written by :meth:`save`."""
        state = load_training_checkpoint(path)
        changed = check_resume(path, state, self.config.to_dict(), getattr(self.model, "config", {}),
                               dist_utils.world_size())
        if changed and self.is_main:
            warnings.warn(f"resuming {path} with other options than it started with (given now, or defaults "
                          f"where an option is left out): {', '.join(changed)}; the run continues with these (its "
                          "schedule planned again where they change it); give the options it started with to "
                          "continue it exactly", stacklevel=2)
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise ValueError(f"{path} has no EMA weights but this run uses EMA (ema_decay={self.config.ema_decay})")
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.batch_in_epoch = state["epoch"], state["step"], state["batch_in_epoch"]
        self.bad_batches, self.best_ap, self.elapsed_before = state["bad_batches"], state["best_ap"], state["elapsed"]
        set_rng_state(state["rng"])
        if state.get("plan_steps") is not None and self.plan is None:
            self._set_plan(state["plan_steps"])  # the estimate of the interrupted run, not a new one
        self.logger.truncate_after(self.step)  # the steps after the checkpoint are trained and logged again
        if self.is_main:
            print(f"resumed from {path}: epoch {self.epoch}, step {self.step}")

    # ---- training -------------------------------------------------------------------------

    def elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self._start if self._start is not None else 0.0)

    def progress(self) -> float:
        """Fraction of the run done: steps / planned steps, or elapsed / time budget if further."""
        values = [0.0]
        if self.planned_steps:
            values.append(self.step / self.planned_steps)
        if self.config.max_minutes:
            values.append(self.elapsed() / (60 * self.config.max_minutes))
        return min(max(values), 1.0)

    def _should_stop(self) -> bool:
        """After a step: stop for Ctrl-C (:attr:`interrupted`), the time budget, ``max_steps`` or the planned
        steps. Ctrl-C and the clock are per process: every rank learns of either on any rank here (one
        collective, on every call, so that all ranks stop after the same step and stop alike)."""
        timed_out = self.config.max_minutes is not None and self.elapsed() >= 60 * self.config.max_minutes
        self.interrupted, timed_out = dist_utils.any_rank_each([self.interrupted, timed_out], self.device)
        if self.interrupted or timed_out:
            return True
        if self.config.max_steps is not None and self.step >= self.config.max_steps:
            return True
        return bool(self.planned_steps and self.config.epochs and self.step >= self.planned_steps)

    def fit(self) -> dict[str, Any]:
        """Train until epochs / max_steps / max_minutes, then evaluate and write the run outputs.

        Ctrl-C while training (in the main thread, where SIGINT has Python's default handler) ends the
        step in progress, saves ``last.pt`` there (an exact resume point, mid-epoch) and raises
        ``KeyboardInterrupt``; one between two steps (an epoch end's checkpoint write) stops after the next
        step. A second Ctrl-C, or one during an evaluation, stops at once; an evaluation stopped so saves
        ``last.pt`` first, at the step it followed (the resumed run skips that evaluation). With several
        processes every one stops after the same step."""
        self._start = time.monotonic()
        self.model.train()
        with self._ctrl_c_ends_the_step():
            # resumed at (or past) its end, e.g. stopped in the final evaluation: no step more, only the outputs
            stopped = self.step > 0 and self._should_stop()
            self._ctrl_c_waits = True
            try:
                while not stopped and (self.config.epochs is None or self.epoch < self.config.epochs):
                    stopped = self._train_epoch()
                    self._stop_if_interrupted()  # a Ctrl-C after the epoch's last stop check (no evaluation then)
                    if self.batch_in_epoch >= self.steps_per_epoch * self.config.grad_accum:
                        self._end_epoch()
                self._stop_if_interrupted()  # a Ctrl-C while the last epoch end saved last.pt
            finally:
                self._ctrl_c_waits = False
        return self._finish()

    def _stop_if_interrupted(self) -> None:
        """Between steps: after a Ctrl-C on any rank (every rank learns of it here), save ``last.pt`` and
        raise ``KeyboardInterrupt``."""
        self.interrupted = dist_utils.any_rank(self.interrupted, self.device)
        if self.interrupted:
            self.save("last.pt")
            raise KeyboardInterrupt(f"interrupted after step {self.step}")

    @contextlib.contextmanager
    def _ctrl_c_ends_the_step(self):
        """SIGINT handled as :meth:`fit` says inside the block: the first one during the steps sets
        :attr:`interrupted`, which :meth:`_should_stop` reads after the step (a Ctrl-C in the middle of
        an optimizer update would leave the weights half-updated, no state to save). Nothing changes
        outside the main thread, or where SIGINT has another handler (ignored in a background job)."""
        if (threading.current_thread() is not threading.main_thread()
                or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
            yield
            return

        def on_ctrl_c(signum, frame) -> None:
            if self.interrupted or not self._ctrl_c_waits:
                raise KeyboardInterrupt
            self.interrupted = True
            if self.is_main:
                print(f"\nCtrl-C: stopping at the end of this step to save {self.out / 'last.pt'} there "
                      "(Ctrl-C again stops at once)", file=sys.stderr, flush=True)

        signal.signal(signal.SIGINT, on_ctrl_c)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def _train_epoch(self) -> bool:
        """One (possibly resumed) epoch; returns True if a stop condition hit inside it."""
        self.sampler.set_epoch(self.epoch, skip=self.batch_in_epoch * self.config.batch_size)
        total = self.steps_per_epoch
        bar = tqdm(
            total=total, initial=self.batch_in_epoch // self.config.grad_accum, desc=f"epoch {self.epoch}",
            unit="step", disable=not (self.config.progress and self.is_main), dynamic_ncols=True,
        )
        accumulated: list[dict[str, float]] = []
        batches_left = self.steps_per_epoch * self.config.grad_accum - self.batch_in_epoch
        try:
            for images, targets in self.loader:
                if batches_left <= 0:
                    break
                batches_left -= 1
                losses = self._forward_backward(images, targets)
                self.batch_in_epoch += 1
                if losses is not None:
                    accumulated.append(losses)
                if self.batch_in_epoch % self.config.grad_accum:
                    continue
                record = self._optimizer_step(accumulated)
                accumulated = []
                bar.update(1)
                bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}", lr=f"{record['lr']:.2e}")
                if self._should_stop():
                    return True
            return False
        finally:
            bar.close()

    def _forward_backward(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, float] | None:
        """Loss of one micro-batch, backpropagated (scaled by 1/grad_accum); None if not finite."""
        images = [image.to(self.device, non_blocking=True) for image in images]
        targets = [{"boxes": t["boxes"].to(self.device), "labels": t["labels"].to(self.device)} for t in targets]
        self._freeze_bn_if_due()
        last_micro = (self.batch_in_epoch + 1) % self.config.grad_accum == 0
        sync = contextlib.nullcontext() if (last_micro or not self.distributed) else self.ddp_model.no_sync()
        with sync:
            with self.autocast():
                losses = self.ddp_model(images, targets)
            loss = losses["loss"]
            finite = not dist_utils.any_rank(not bool(torch.isfinite(loss.detach()).item()), self.device)
            if not finite:
                self._skip_bad_batch("non-finite loss")
                return None
            self.scaler.scale(loss / self.config.grad_accum).backward()
        return {key: float(value.detach()) for key, value in losses.items()}

    def _freeze_bn_if_due(self) -> None:
        """In the last ``freeze_bn_fraction`` of training, put every BatchNorm in eval mode: it then
        normalises with (and no longer updates) its running statistics, as evaluation will.

        Called before every micro-batch because evaluation in between restores train mode.
        """
        fraction = self.config.freeze_bn_fraction or 0.0
        if fraction and self.progress() >= 1.0 - fraction:
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def _skip_bad_batch(self, why: str) -> None:
        self.bad_batches += 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.is_main:
            warnings.warn(f"skipped a bad batch ({why}) at step {self.step}; {self.bad_batches} skipped so far")

    def _optimizer_step(self, accumulated: list[dict[str, float]]) -> dict[str, Any]:
        factor = self.schedule.apply(self.optimizer, self.step, self.progress())
        norm = torch.tensor(float("nan"))
        if accumulated:  # else every micro-batch was skipped: nothing to unscale or step
            self.scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            norm = torch.nn.utils.clip_grad_norm_(params, self.config.clip_grad or float("inf"))
            if torch.isfinite(norm):
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
            elif self.scaler.is_enabled():
                # fp16 AMP: an overflowing loss scale is how the scale is found, not bad data. Skip the step
                # (the optimizer never sees the gradients) and halve the scale: update() must follow unscale_().
                self.scaler.update()
            else:
                self._skip_bad_batch("non-finite gradient")
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self._calibrate()
        record: dict[str, Any] = {"step": self.step, "epoch": self.epoch, "lr": self.config.lr * factor,
                                  "grad_norm": float(norm), "time": round(self.elapsed(), 3)}
        if accumulated:
            means = {key: sum(l[key] for l in accumulated) / len(accumulated) for key in accumulated[0]}
            record.update(dist_utils.all_reduce_mean(means, self.device))
        if self.step % self.config.log_every == 0 or self.step == 1:
            self.logger.log("step", record)
        for callback in self.callbacks:
            callback(self, record)
        return record

    def _end_epoch(self) -> None:
        """Advance the epoch counter, evaluate if due, keep last/best checkpoints."""
        finished = self.epoch
        self.epoch += 1
        self.batch_in_epoch = 0
        record: dict[str, Any] = {"epoch": finished, "step": self.step, "time": round(self.elapsed(), 3)}
        due = bool(self.eval_every) and (finished + 1) % self.eval_every == 0
        last_epoch = self.config.epochs is not None and self.epoch >= self.config.epochs
        if self.val_set is not None and due and not (last_epoch or self._should_stop()):
            record.update(self._evaluate_or_save_on_ctrl_c())
        self.logger.log("epoch", record)
        self.save("last.pt")
        self._maybe_save_best()

    def _maybe_save_best(self) -> None:
        if self.last_stats is not None and self.last_stats["AP"] > self.best_ap:
            self.best_ap = self.last_stats["AP"]
            self.save("best.pt")

    # ---- evaluation and outputs -----------------------------------------------------------

    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and exported: the EMA if enabled, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def run_evaluation(self) -> dict[str, float]:
        if self.val_set is None:
            raise ValueError("no validation set to evaluate on")
        if self.ema is not None:  # every rank scores its shard with the weights rank 0 writes
            dist_utils.broadcast_buffers(self.ema.module)
        stats, self._records = evaluate(
            self.eval_model(), self.val_set, self.device, batch_size=self.config.batch_size,
            max_images=self.config.eval_max_images, progress=self.config.progress, autocast=self.autocast,
        )
        self.max_dets = stats.pop("max_dets")
        self.last_stats, self._stats_step = stats, self.step
        return stats

    def _evaluate_or_save_on_ctrl_c(self) -> dict[str, float]:
        """:meth:`run_evaluation`, which a Ctrl-C stops at once: ``last.pt`` is then saved at the step the
        evaluation followed (an exact resume point; without it, the steps since the last epoch end were lost)."""
        waits, self._ctrl_c_waits = self._ctrl_c_waits, False
        try:
            return self.run_evaluation()
        except KeyboardInterrupt:
            self.interrupted = True
            self.save("last.pt")  # (a second Ctrl-C here stops the atomic write, keeping the previous file)
            raise
        finally:
            self._ctrl_c_waits = waits

    def _finish(self) -> dict[str, Any]:
        """Final evaluation, checkpoints, weights, metrics.json and pictures."""
        stats: dict[str, float] = {}
        if self.val_set is not None:
            fresh = self.last_stats is not None and self._stats_step == self.step
            stats = self.last_stats if fresh else self._evaluate_or_save_on_ctrl_c()
        # the index of the epoch the last step belongs to, as the epoch rows count (metrics.json: epochs completed)
        last = self.epoch - 1 if self.batch_in_epoch == 0 and self.epoch > 0 else self.epoch
        self.logger.log("epoch", {"epoch": last, "step": self.step, "time": round(self.elapsed(), 3),
                                  "final": 1, **stats})
        self.save("last.pt")
        self._maybe_save_best()
        metrics = {key: stats.get(key, -1.0) for key in STAT_KEYS} if stats else {}
        metrics.update(wall_time_s=round(self.elapsed(), 2), steps=self.step, epochs=self.epoch,
                       bad_batches=self.bad_batches, model=self.config.model, world_size=dist_utils.world_size())
        if stats:
            metrics["max_dets"] = self.max_dets
        if self.is_main:
            self._write_outputs(metrics)
        self.logger.close()
        dist_utils.barrier()
        return metrics

    def _write_outputs(self, metrics: dict[str, Any]) -> None:
        model = self.eval_model()
        save_weights(model.state_dict(), self.out / "weights.safetensors", getattr(model, "config", {"model": self.config.model}))
        (self.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        plot_curves(read_log(self.out), self.out / "curves.png")
        records = self._records[: self.config.predictions_grid]
        if records:
            samples = [self.val_set[index] for index, _, _ in records]
            plot_predictions(
                [image for image, _ in samples], [prediction for _, _, prediction in records],
                getattr(model, "class_names", []), self.out / "predictions.png", targets=[t for _, t in samples],
            )

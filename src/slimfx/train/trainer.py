"""One training run of :func:`slimfx.train.loop.fit`, as an object: set-up, epochs, steps, saving.

:class:`Trainer` builds the optimizer and LR schedule, restores a ``--resume`` checkpoint,
runs the epochs (each a pass of training steps, BatchNorm averaging across ranks, a test
pass and a checkpoint) and turns Ctrl-C and NaN losses into the errors of
:mod:`slimfx.train.stop`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimfx.data import epoch_loader
from slimfx.files import ensure_output_dir
from slimfx.train import distributed
from slimfx.train.config import EpochResult, StepInfo, TrainResult
from slimfx.train.evaluation import evaluate
from slimfx.train.sparsity import SparsityRegularizer, unwrap
from slimfx.train.state import (
    CHECKPOINT_NAME,
    ResumePoint,
    restore_checkpoint,
    rng_state,
    write_checkpoint,
)
from slimfx.train.stop import (
    ForcedStop,
    StopSignal,
    TrainingInterrupted,
    interrupted_between_epochs,
    interrupted_in_epoch,
    nonfinite_loss,
)

logger = logging.getLogger(__name__)

__all__ = ["Trainer"]


class Trainer:
    """One run of :func:`slimfx.train.loop.fit`: its model, optimizer, schedule and resume point.

    Built on every rank inside an initialised process group (or none); :meth:`run` trains
    the epochs still to do. Use :func:`slimfx.train.loop.fit` rather than this class.

    Parameters
    ----------
    model : torch.nn.Module
        Trained in place (moved to the device); a ``DataParallel`` or
        ``DistributedDataParallel`` wrapper is unwrapped.
    train_set, test_set : Dataset
        ``(image, label)`` pairs.
    config : TrainConfig
        Validated settings.
    ctx : slimfx.train.distributed.DistContext
        The process group of this rank (from :func:`slimfx.train.distributed.setup`).
    on_step_end, on_epoch_end : callable or None
        Called with a :class:`StepInfo` / :class:`EpochResult`.
    """

    def __init__(self, model, train_set, test_set, config, ctx, on_step_end, on_epoch_end):
        self.inner = unwrap(model)
        self.train_set, self.test_set, self.config, self.ctx = train_set, test_set, config, ctx
        self.on_step_end, self.on_epoch_end = on_step_end, on_epoch_end
        self.folder = (
            ensure_output_dir(config.save_dir) if config.save_dir and ctx.is_main else None
        )
        self.regularizer = None
        if config.sparsity > 0:
            example = train_set[0][0].unsqueeze(0)
            self.regularizer = SparsityRegularizer(
                self.inner, config.sparsity, example_inputs=example
            )
        self.inner.to(ctx.device)
        self.optimizer = torch.optim.SGD(
            self.inner.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=config.milestone_epochs(), gamma=config.lr_decay
        )
        self.resume = ResumePoint(0, 0, 0.0, None, False)
        self.last_checkpoint: tuple[Path, int] | None = None
        if config.resume:
            self.resume = restore_checkpoint(
                config.resume,
                model=self.inner,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                device=ctx.device,
            )
            self.last_checkpoint = (Path(config.resume), self.resume.epoch)
            if self.resume.sparsity is not None and self.resume.sparsity != config.sparsity:
                logger.warning(
                    "resuming with s=%g; the checkpoint was trained with s=%g",
                    config.sparsity,
                    self.resume.sparsity,
                )
        if not self.resume.rng_restored:
            torch.manual_seed(config.seed + self.resume.epoch)
        self.best = self.resume.best_prec1
        self.net: nn.Module = self.inner
        if ctx.enabled:
            ids = [ctx.device] if ctx.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.inner, device_ids=ids)
        self.stop = StopSignal()

    def run(self) -> TrainResult:
        """Train the remaining epochs, testing and saving a checkpoint after each.

        Returns
        -------
        TrainResult

        Raises
        ------
        TrainingInterrupted
            On Ctrl-C (after saving a resumable checkpoint when inside an epoch).
        NonFiniteLossError
            When the loss becomes NaN or infinite.
        """
        result = TrainResult(self.inner, best_accuracy=self.best, start_epoch=self.resume.epoch)
        if self.resume.epoch >= self.config.epochs:
            logger.warning(
                "the checkpoint has %d epochs done already (--epochs %d): nothing to do",
                self.resume.epoch,
                self.config.epochs,
            )
        with self.stop:
            for epoch in range(self.resume.epoch, self.config.epochs):
                first = self.resume.step if epoch == self.resume.epoch else 0
                try:
                    epoch_result = self._epoch(epoch, first)
                except TrainingInterrupted:
                    raise
                except KeyboardInterrupt:  # in the test pass: the last checkpoint stands
                    raise interrupted_between_epochs(
                        f"stopped in the test pass of epoch {epoch + 1}", self.last_checkpoint
                    ) from None
                result.history.append(epoch_result)
                result.checkpoint = epoch_result.checkpoint
                try:
                    if self.on_epoch_end:
                        self.on_epoch_end(epoch_result)
                    (stop,) = distributed.any_rank(self.ctx, self.stop.requested)
                except KeyboardInterrupt:
                    stop = True
                if stop and epoch + 1 < self.config.epochs:
                    raise interrupted_between_epochs(
                        f"interrupted after epoch {epoch + 1}", self.last_checkpoint
                    )
        result.best_accuracy = self.best
        return result

    def _epoch(self, epoch: int, first_step: int) -> EpochResult:
        start = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        loss_sum, correct, seen = self._train_steps(epoch, first_step)
        self.scheduler.step()
        distributed.average_buffers(self.inner, self.ctx)
        prec1 = evaluate(
            self.inner,
            self.test_set,
            batch_size=self.config.test_batch_size,
            device=self.ctx.device,
            ctx=self.ctx,
        )
        loss_sum, correct, seen = distributed.sum_over_ranks(self.ctx, loss_sum, correct, seen)
        is_best = prec1 > self.best
        self.best = max(prec1, self.best)
        path = self._save(epoch + 1, 0, prec1, rng_state(self.ctx.device), is_best)
        sparse = self.regularizer.fraction_below(1e-2) if self.regularizer else None
        logger.info("epoch %d: test accuracy %.4f", epoch + 1, prec1)
        return EpochResult(
            epoch + 1,
            loss_sum / max(seen, 1),
            correct / max(seen, 1),
            prec1,
            self.best,
            lr,
            time.perf_counter() - start,
            sparse,
            path,
        )

    def _train_steps(self, epoch: int, first_step: int) -> tuple[float, int, int]:
        from tqdm.auto import tqdm

        loader = epoch_loader(
            self.train_set,
            self.config.batch_size,
            seed=self.config.seed,
            epoch=epoch,
            skip_batches=first_step,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            num_workers=self.config.num_workers,
            pin_memory=self.ctx.device.type == "cuda",
        )
        steps = first_step + len(loader)
        done, rng = first_step, rng_state(self.ctx.device)
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(
            total=steps,
            initial=first_step,
            desc=f"epoch {epoch + 1}/{self.config.epochs}",
            disable=not (self.config.progress and self.ctx.is_main),
            leave=False,
        )
        self.net.train()
        try:
            for x, y in loader:
                x, y = x.to(self.ctx.device, non_blocking=True), y.to(self.ctx.device)
                self.optimizer.zero_grad(set_to_none=True)
                output = self.net(x)
                loss = F.cross_entropy(output, y)
                bad, stop = distributed.any_rank(
                    self.ctx, not bool(torch.isfinite(loss)), self.stop.requested
                )
                if bad:
                    raise nonfinite_loss(loss, epoch + 1, done + 1, steps, self.last_checkpoint)
                loss.backward()
                if self.regularizer is not None:
                    self.regularizer.apply()
                self.optimizer.step()
                done, rng = done + 1, rng_state(self.ctx.device)
                loss_sum += float(loss.detach()) * len(y)
                correct += int((output.argmax(1) == y).sum())
                seen += len(y)
                bar.update(1)
                if self.on_step_end:
                    self.on_step_end(
                        StepInfo(epoch + 1, done, steps, float(loss.detach()), self.ctx.rank)
                    )
                if stop or (not self.ctx.enabled and self.stop.requested):
                    raise KeyboardInterrupt
        except ForcedStop:
            raise interrupted_in_epoch(epoch + 1, done, steps, None, self.last_checkpoint) from None
        except KeyboardInterrupt:
            saved = self._save(epoch, done, None, rng, False)
            raise interrupted_in_epoch(
                epoch + 1, done, steps, saved, self.last_checkpoint
            ) from None
        finally:
            bar.close()
        return loss_sum, correct, seen

    def _save(self, epoch: int, step: int, prec1, rng, is_best: bool) -> Path | None:
        """Rank 0 writes the checkpoint; every rank returns its path (None without --save)."""
        if not self.config.save_dir:
            return None
        path = Path(self.config.save_dir) / CHECKPOINT_NAME
        if self.folder is not None:
            path = write_checkpoint(
                self.folder,
                model=self.inner,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                epoch=epoch,
                step=step,
                best_prec1=self.best,
                prec1=prec1,
                rng=rng,
                extra={
                    "seed": self.config.seed,
                    "sparsity": self.config.sparsity,
                    "world_size": self.ctx.world_size,
                },
                is_best=is_best,
            )
        self.last_checkpoint = (path, epoch)
        return path

"""The training loop behind `python -m alexnet.train` (settings: alexnet/training/recipe.py; the
process, store and model it starts from: alexnet/training/session.py; its checks: alexnet/training/checks.py).

One process trains the single-device model; under torchrun each pair of ranks trains the
two-column model (alexnet/network/parallel.py) and pairs are data-parallel replicas. Only rank 0
prints and writes. Checkpoints always hold the single-device (grouped) layout, so any
checkpoint resumes or evaluates in any layout.
"""
from __future__ import annotations

import errno
import math
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm import tqdm

from alexnet.base.errors import UsageError
from alexnet.data.augment import AugmentConfig
from alexnet.data.loaders import EvalLoader, TrainLoader
from alexnet.network.config import uses_kernels
from alexnet.network.parallel import full_state, local_state
from alexnet.training import checkpoint
from alexnet.training.checks import at_chance, check_checkpoint_store, loss_remark, stall_message, weights_finite
from alexnet.training.evaluation import error_rates, evaluate
from alexnet.training.metrics import MetricsLog
from alexnet.training.optim import PlateauSchedule, load_velocity, set_lr
from alexnet.training.outdir import RUN_FILES, check_resume_auto, claim_output_dir, refuse_used_output_dir
from alexnet.training.recipe import RESUME_FIELDS, TrainConfig
from alexnet.training.session import Session, build_model, check_ops, resolve_precision, resolve_store, tf32_as
from alexnet.training.step import build_optimizer, training_step
from kernels import verify

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}


class NonFiniteLoss(RuntimeError):
    pass


def velocity_by_name(model, optimizer) -> dict:
    return {name: optimizer.state[p]["velocity"] if "velocity" in optimizer.state[p] else torch.zeros_like(p)
            for name, p in model.named_parameters()}


def rng_state(model, session: Session) -> dict:
    state = {"torch": torch.get_rng_state(), "dropout": model.dropout.get_rng_state(session.device)}
    if session.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(session.device)
    return state


def set_rng_state(model, state: dict, session: Session) -> None:
    torch.set_rng_state(state["torch"])
    model.dropout.set_rng_state(state["dropout"], session.device)
    if "cuda" in state and session.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], session.device)


# ------------------------------------------------------------------ the loop
class Trainer:
    def __init__(self, config: TrainConfig):
        self.session = session = Session(config)
        # what the device has, before anything is written: --precision auto made concrete (bf16 on
        # sm_80+), a precision the GPU lacks or --ops triton below sm_80 refused in one line
        self.ops_note = check_ops(config.ops, session.device)
        self.config = config = replace(config, precision=resolve_precision(config.precision, session.device))
        self.out = Path(config.out)
        self.lock = None
        if session.is_main:  # before anything is written: a used OUT is refused, a second run locked out
            self.lock = claim_output_dir(self.out, resume=config.resume is not None, overwrite=config.overwrite)
            checkpoint.remove_stale_temps(self.out, RUN_FILES)
        else:
            refuse_used_output_dir(self.out, resume=config.resume is not None, overwrite=config.overwrite)
        if config.resume == "auto":
            check_resume_auto(self.out)
        # the kernel checks (kernels/runtime/verify.py): on unless --no-verify (or ALEXNET_VERIFY=0); what
        # they exclude or replace goes to OUT/verify.jsonl (written only if there is something to say)
        if not config.verify:
            verify.set_enabled(False)
        verify.set_log(self.out / "verify.jsonl" if session.is_main else None)
        self.checks_reported = False
        self.store = resolve_store(config, session)
        if "val" not in self.store.splits or len(self.store.split("val")) == 0:
            raise UsageError(f"alexnet.train: {self.store.path} has no validation images; every epoch ends with a "
                             "validation (prepare SRC with a val/ folder)")
        self.dtype = DTYPES[config.precision]
        n_train = len(self.store.split("train"))
        if config.batch_size * session.data_world > n_train:
            raise UsageError(f"alexnet.train: --batch-size {config.batch_size} x {session.data_world} replica(s) is "
                             f"larger than the {n_train} training images of {self.store.path}: choose --batch-size "
                             f"<= {n_train // session.data_world}")
        self.model, self.model_config = build_model(config, self.store, session)
        channels_last = bool(self.model_config.channels_last)
        augment = AugmentConfig(crop_size=config.image_size, flip=config.flip,
                                lighting_std=AugmentConfig.lighting_std if config.lighting else 0.0)
        self.train_loader = TrainLoader(self.store, config.batch_size, session.device, rank=session.data_rank,
                                        world=session.data_world, seed=config.seed, dtype=self.dtype,
                                        channels_last=channels_last, augment=augment, ops=self.model_config.ops,
                                        conv1=self.model_config.convs[0], threads=config.threads)
        self.val_loader = EvalLoader(self.store, config.batch_size, session.device, rank=session.data_rank,
                                     world=session.data_world, dtype=self.dtype, channels_last=channels_last,
                                     crop_size=config.image_size, ops=self.model_config.ops, threads=config.threads)
        replicas = 1 if session.layout is None else session.layout.replicas
        self.optimizer = build_optimizer(self.model, self.model_config.ops, self.dtype, config.lr, config.momentum,
                                         config.weight_decay, replicas)
        self.schedule = PlateauSchedule(lr=config.lr, patience=config.patience, max_reductions=config.lr_reductions)
        self.metrics = MetricsLog(self.out)
        self.step = 0
        self.best_top1 = math.inf
        self.finite = torch.ones((), dtype=torch.bool, device=session.device)
        from alexnet.training.step_graph import StepRunner

        self.runner = StepRunner(training_step, self.model, self.optimizer, self.finite,
                                 self.model.sync_gradients if session.layout is not None else None,
                                 capture=config.cuda_graph, distributed=session.layout is not None, log=session.print)
        self._share_tuning()
        self.resumed_from = self._maybe_resume()

    # -------------------------------------------------------------- checkpoints
    def _share_tuning(self) -> None:
        """Distributed on CUDA with the Triton ops: every rank tunes on a blank batch, then
        takes rank 0's choices (alexnet.training.tuning.tune_and_share)."""
        s, m = self.session, self.model_config
        if s.layout is None or s.device.type != "cuda" or not uses_kernels(m.ops):
            return
        from alexnet.training.tuning import tune_and_share

        with tf32_as(self.config.precision):  # the tiles the run will use: tuned under its precision
            shared = tune_and_share(self.model, self.optimizer, self.config.batch_size, self.config.image_size,
                                    self.dtype, bool(m.channels_last), m.convs[0], s.device)
        s.print(f"alexnet.train: {shared} convolution launch plans shared from rank 0")

    def _maybe_resume(self) -> str | None:
        path = self.config.resume
        if path == "auto":
            path = self.out / "checkpoint_last.pt"
            if not path.exists():  # nothing to continue; a row of an epoch killed before its checkpoint goes
                if self.session.is_main and self.metrics.path.exists():
                    self.metrics.truncate_after(0)
                return None
        if path is None:
            return None
        ckpt = checkpoint.check_structure(checkpoint.load(path), path)
        check_checkpoint_store(ckpt, self.store, path)
        saved = ckpt["config"]
        for key in RESUME_FIELDS:
            if saved[key] != getattr(self.config, key):
                raise UsageError(f"alexnet.train: cannot resume {path}: it was trained with {key}={saved[key]!r}, "
                                 f"this run has {getattr(self.config, key)!r}")
        self.model.load_state_dict(local_state(ckpt["model"], self.session.layout))
        if hasattr(self.optimizer, "refresh_low_precision"):
            self.optimizer.refresh_low_precision()  # the layers' 16-bit copies of the loaded weights
        load_velocity(self.optimizer, self.model, local_state(ckpt["velocity"], self.session.layout))
        self.schedule.load_state_dict(ckpt["schedule"])
        self.train_loader.load_state_dict(ckpt["loader"])
        self.step, self.best_top1 = ckpt["step"], ckpt["best_top1"]
        rank = self.session.layout.rank if self.session.layout else 0
        try:
            set_rng_state(self.model, ckpt["rng"][rank], self.session)
        except (IndexError, ValueError, RuntimeError):
            self.session.print("  note: the checkpoint comes from another layout; random streams start afresh "
                               "(the run continues, but not bit-identically)")
        if self.session.is_main:
            self.metrics.truncate_after(self.train_loader.epoch)  # records are 1-based: epochs done
        self.resumed_at = (self.train_loader.position, self.step)  # a mid-epoch resume: the row says so
        return str(path)

    def save(self, best: bool = False) -> None:
        """Write checkpoint_last.pt (and checkpoint_best.pt) atomically; every rank takes part.
        Never after a non-finite loss: the last good checkpoint stays."""
        self.check_finite()
        model = full_state(self.model.state_dict(), self.session.layout)
        velocity = full_state(velocity_by_name(self.model, self.optimizer), self.session.layout)
        rng = [rng_state(self.model, self.session)]
        if self.session.layout is not None:
            rng = [None] * self.session.layout.world_size
            torch.distributed.all_gather_object(rng, rng_state(self.model, self.session))
        if not self.session.is_main:
            return
        ckpt = {"format": 1, "model": model, "velocity": velocity, "schedule": self.schedule.state_dict(),
                "loader": self.train_loader.state_dict(), "step": self.step, "best_top1": self.best_top1,
                "rng": rng, "config": asdict(self.config), "model_config": asdict(self.model_config),
                "classes": self.store.classes, "store": self.store.fingerprint,
                "store_path": str(self.store.path.resolve()), "kernels": self.kernels_record(),
                **checkpoint.inference_info(self.store, self.config.image_size)}
        checkpoint.save(ckpt, self.out / "checkpoint_last.pt")
        if best:
            checkpoint.save(ckpt, self.out / "checkpoint_best.pt")

    # -------------------------------------------------------------- one step
    def train_step(self, images, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """One step; returns the loss and the number of wrong top-1 guesses as device
        tensors (no host sync: finiteness is checked at log steps and before checkpoints)."""
        loss, wrong = self.runner(images, labels)  # captured in a CUDA graph with --cuda-graph
        self.step += 1
        if not self.checks_reported:  # after the warm-up (the first step; a graph's eager warm-up steps too)
            self.checks_reported = True
            if self.session.is_main and self.kernels_checked():
                self.session.print(f"alexnet.train: {verify.summary()}")
        return loss, wrong

    def kernels_checked(self) -> bool:
        """Whether this run's Triton kernels are subject to the checks (a GPU, or the interpreter when asked)."""
        return uses_kernels(self.model_config.ops) and (self.session.device.type == "cuda" or verify.STATE.interpreter)

    def kernels_record(self) -> dict:
        """Which implementation each op ran ('triton' / 'reference'), for the metrics log and the checkpoint."""
        if not uses_kernels(self.model_config.ops):
            return {"ops": self.model_config.ops}
        return {"ops": "triton", "checked": verify.STATE.enabled and self.kernels_checked(),
                "ran": verify.implementations()}

    def check_finite(self) -> None:
        """Raise NonFiniteLoss if any step since the last check had a NaN/inf loss, or if a
        weight is NaN/inf now (one host sync, here only). Non-finite weights are sticky
        (w += v keeps NaN and inf), and a non-finite gradient makes its weights non-finite
        at the step (lr > 0), so checking the weights here misses no gradient either."""
        finite = self.finite & weights_finite(self.model)
        if self.session.layout is not None:  # every rank must stop together: AND over the shards
            flag = finite.to(torch.int32)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            finite = flag.bool()
        if not bool(finite):
            raise NonFiniteLoss(f"the loss, gradients or weights became non-finite before step {self.step}")

    def grad_norms(self) -> dict:
        """Per-layer weight-gradient norms: a stalled start shows as tiny, flat norms."""
        gradient = getattr(self.optimizer, "gradient", lambda p: p.grad)
        return {name.rsplit(".", 1)[0]: round(gradient(p).float().norm().item(), 6)
                for name, p in self.model.named_parameters() if name.endswith("weight") and gradient(p) is not None}

    # -------------------------------------------------------------- epochs
    def train_epoch(self, epoch: int) -> dict:
        config, session = self.config, self.session
        self.model.train()
        set_lr(self.optimizer, self.schedule.lr)
        steps_left = len(self.train_loader) - self.train_loader.position
        bar = tqdm(total=steps_left, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not session.is_main,
                   unit="step", dynamic_ncols=True, leave=True)
        loss_sum = torch.zeros((), device=session.device)
        wrong_sum = torch.zeros((), device=session.device, dtype=torch.int64)
        seen, start, norms = 0, time.perf_counter(), {}
        for images, labels in self.train_loader:
            loss, wrong = self.train_step(images, labels)
            loss_sum += loss * len(labels)
            wrong_sum += wrong
            seen += len(labels)
            bar.update(1)
            if self.step % config.log_every == 0 or seen == len(labels):
                self.check_finite()
                norms = self.grad_norms()
                rate = seen * session.data_world / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{self.schedule.lr:.0e}", img_s=f"{rate:.0f}")
                if session.is_main:
                    bar.write(f"step {self.step}: loss {loss.item():.4f} (chance "
                              f"{math.log(self.store.num_classes):.3f}), weight-gradient norms "
                              + " ".join(f"{k} {v:.2e}" for k, v in norms.items()))
            if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                self.save()
            if config.max_steps is not None and self.step >= config.max_steps:
                break
        bar.close()
        totals = torch.stack([loss_sum, wrong_sum.to(loss_sum.dtype), torch.tensor(float(seen), device=session.device)])
        if session.layout is not None and session.layout.replicas > 1:
            torch.distributed.all_reduce(totals)  # sums over both ranks of every replica
            totals /= 2  # the two ranks of a pair saw the same images
        loss_total, wrong_total, n = totals.tolist()
        elapsed = time.perf_counter() - start
        return {"train_loss": loss_total / max(n, 1), "train_top1": wrong_total / max(n, 1), "images": int(n),
                "train_time_s": elapsed, "images_per_s": n / elapsed if elapsed else 0.0, "grad_norms": norms}

    def validate(self) -> tuple[float, float]:
        counts = evaluate(self.model, self.val_loader, self.config.eval_views)
        if self.session.layout is not None and self.session.layout.replicas > 1:
            torch.distributed.all_reduce(counts)
            counts /= 2
        return error_rates(counts)

    def run(self) -> dict:
        """Train to the end of the schedule, with torch's TF32 switches as the precision asks
        while it runs (restored after: nothing of the run's stays set in the process)."""
        with tf32_as(self.config.precision):
            return self._run()

    def _run(self) -> dict:
        config, session = self.config, self.session
        self._banner()
        start, epoch, last = time.perf_counter(), self.train_loader.epoch, None
        self.resumed_epoch = epoch
        self.images_trained, stalled_epochs = 0, 0
        while epoch < config.epochs and not self.schedule.finished:
            record = self.train_epoch(epoch)
            self.images_trained += record["images"]
            partial = 0 < self.train_loader.position < len(self.train_loader)  # max_steps stopped it mid-epoch
            if partial:
                self.save()
                break
            top1, top5 = self.validate()
            event = self.schedule.step(top1) if not config.lr_step else self.fixed_step(epoch + 1)
            best = top1 < self.best_top1
            self.best_top1 = min(self.best_top1, top1)
            record.update(epoch=epoch + 1, step=self.step, lr=self.optimizer.param_groups[0]["lr"], val_top1=top1,
                          val_top5=top5, chance_top1=1 - 1 / self.store.num_classes, schedule=event,
                          kernels=self.kernels_record())
            resumed_position, resumed_step = getattr(self, "resumed_at", (0, 0))
            if resumed_position and epoch == self.resumed_epoch:  # train_* cover only the steps since the resume
                record.update(resumed_mid_epoch=True, resumed_at_step=resumed_step)
            self.check_finite()
            if session.is_main:  # the row first: a kill before the checkpoint only repeats this epoch
                self.metrics.append(record)
            self.save(best=best)
            if session.is_main:
                session.print(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f}, train top-1 "
                              f"{record['train_top1']:.1%}, val top-1 {top1:.1%}, top-5 {top5:.1%} "
                              f"(chance {record['chance_top1']:.1%}); lr {record['lr']:.0e} -> {event}"
                              + loss_remark(record["train_loss"], self.store.num_classes))
            stalled_epochs = stalled_epochs + 1 if at_chance(record, self.store.num_classes) else 0
            if stalled_epochs >= 2 and session.is_main:
                session.print(stall_message(config, stalled_epochs))
            last = record
            epoch += 1
            if config.max_steps is not None and self.step >= config.max_steps:
                break
        return self._summary(last, time.perf_counter() - start)

    def fixed_step(self, epochs_done: int) -> str:
        """The fixed schedule (--lr-step N): lr / 10 after every N epochs."""
        if epochs_done % self.config.lr_step:
            return "fixed"
        self.schedule.lr /= self.schedule.factor
        self.schedule.reductions += 1
        return f"lr / 10 (fixed, every {self.config.lr_step} epochs)"

    def _banner(self) -> None:
        c, s, m = self.config, self.session, self.model_config
        n_params = sum(p.numel() for p in self.model.parameters())
        where = "1 process" if s.layout is None else (f"{s.layout.world_size} ranks ({s.layout.backend}): "
                                                       f"{s.layout.replicas} replica(s) x 2 columns")
        if self.ops_note:
            s.print(self.ops_note)
        s.print(f"alexnet.train: {where} on {s.device}, ops={m.ops}, precision={c.precision}, "
                f"channels_last={m.channels_last}")
        s.print(f"  data: {self.store.path} ({self.store.num_classes} classes, {len(self.store.split('train'))} train"
                f" / {len(self.store.split('val'))} val images{', the demo dataset' if c.data is None else ''})")
        s.print(f"  model: {n_params:,} parameters{' on this rank' if s.layout else ''}, input {c.image_size} px; "
                f"lrn={c.lrn} overlap_pool={c.overlap_pool} activation={c.activation} columns={c.columns}")
        schedule = (f"/10 every {c.lr_step} epochs" if c.lr_step else
                    f"/10 after {c.patience} epochs without a new best, {c.lr_reductions} times")
        s.print(f"  recipe: batch {c.batch_size}, lr {c.lr} ({schedule}), momentum {c.momentum}, weight decay "
                f"{c.weight_decay}, init {c.init} (N(0, {c.initial()[0]}), biases {c.initial()[1]}), "
                f"augmentation: "
                f"flip={c.flip} lighting={c.lighting}, up to {c.epochs} epochs of {len(self.train_loader)} steps; "
                f"outputs in {self.out}")
        if s.layout is not None:
            from alexnet.network.parallel import exchange_plan, format_plan

            s.print(format_plan(exchange_plan(self.model_config, c.batch_size, self.dtype.itemsize,
                                              s.layout.replicas), c.batch_size))
        if self.resumed_from:
            s.print(f"  resumed from {self.resumed_from} at epoch {self.train_loader.epoch + 1}, "
                    f"step {self.step}, lr {self.schedule.lr:g} (the checkpoint's schedule, not --lr)")

    def _summary(self, last: dict | None, elapsed: float) -> dict:
        summary = {"steps": self.step, "time_s": elapsed, "best_val_top1": self.best_top1, "out": str(self.out)}
        if last:
            rate = self.images_trained / elapsed if elapsed else 0.0  # the whole run: validation, checkpoints too
            summary.update(val_top1=last["val_top1"], val_top5=last["val_top5"], images_per_s=rate)
            self.session.print(
                f"done: {self.step} steps, {self.images_trained} training images in {elapsed / 60:.1f} min "
                f"({rate:.0f} images/s over the whole run); "
                f"final val top-1 {last['val_top1']:.1%}, top-5 {last['val_top5']:.1%}, best top-1 "
                f"{self.best_top1:.1%} (chance {1 - 1 / self.store.num_classes:.1%}); checkpoints, "
                f"metrics.jsonl and curves.png in {self.out}")
        else:
            self.session.print(f"stopped after {self.step} steps; checkpoint in {self.out}")
        return summary


def run(config: TrainConfig) -> int:
    from alexnet.data.store import StoreError

    trainer = None
    try:
        from alexnet.data.prepare import PrepareError

        try:
            trainer = Trainer(config)
        except (ValueError, PrepareError) as err:  # set-up refusals (a batch larger than the data, a bad folder)
            raise UsageError(f"alexnet.train: {err}") from None
        trainer.run()
        return 0
    except NonFiniteLoss as err:
        kept = Path(config.out) / "checkpoint_last.pt"
        kept = (f"the last good checkpoint, {kept}, is intact" if kept.exists() else
                "no checkpoint had been written yet")
        print(f"alexnet.train: {err}. Stopped; {kept} (try a lower --lr, or --precision fp32).", flush=True)
        return 2
    except UsageError as err:  # one clear line, no traceback
        print(err.message, file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: say where the run stands and how to continue, not a traceback
        kept = Path(config.out) / "checkpoint_last.pt"
        kept = f"the last checkpoint, {kept}, is intact" if kept.exists() else "no checkpoint had been written yet"
        print(f"alexnet.train: interrupted; {kept}. Continue with the same command and --resume auto.",
              file=sys.stderr, flush=True)
        return 130
    except (checkpoint.CheckpointError, StoreError, FileNotFoundError) as err:
        print(f"alexnet.train: {err}", file=sys.stderr, flush=True)
        return 2
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        print(f"alexnet.train: disk full ({err}); stopped. Checkpoints are written atomically: the last complete "
              f"one in {config.out} is intact. Free space and continue with --resume auto.",
              file=sys.stderr, flush=True)
        return 1
    finally:
        if trainer is not None:
            trainer.train_loader.close()
            trainer.val_loader.close()
            trainer.session.close()
            if trainer.lock is not None:
                trainer.lock.close()

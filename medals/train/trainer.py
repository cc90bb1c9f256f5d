"""The training loop: sample → forward (deep supervision) → Dice + BCE → AdamW step, on one or many processes.

Reproducibility: every random draw of a step (case, patch, augmentation, queries, prompts, dropout) comes from
generators seeded with (seed, rank, step), and the choice to train a step without the per-query prompt from
(seed, step), so all processes make it together. A run resumed from a checkpoint therefore continues exactly as
the uninterrupted run would have.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from ..device import autocast_dtype
from ..errors import InputError, MedalSError
from ..weights.store import models_dir
from .batches import collate, choose_case, draw_sample
from .checkpoint import CHECKPOINT_FILE, check_resumable, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .dataset import Dataset, load_dataset
from .distributed import Processes, barrier, mean_over_processes, start, stop
from .initial import TrainingModel, export_model, initial_model
from .loss import deep_supervision_loss
from .schedule import learning_rate
from .segmenter import Segmenter, tower_features

LOG_FILE = "log.jsonl"
MODEL_DIR = "model"


@dataclass
class TrainResult:
    """What a run did: the steps it ran (first, end), the mean loss of each logged window, where it wrote, and
    the trained model itself."""

    first_step: int
    end_step: int
    logged_losses: list[float]
    checkpoint: Path
    model_folder: Path | None
    seconds: float
    model: TrainingModel


def step_seed(*numbers: int) -> int:
    """A 63-bit seed from non-negative integers (e.g. seed, rank, step, stage), well mixed."""
    return int(np.random.SeedSequence(list(numbers)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _check_modalities(dataset: Dataset, modalities) -> None:
    for prompt_set in dataset.prompt_sets.values():
        if prompt_set.modality not in modalities:
            raise InputError(f"prompt set {prompt_set.name!r}: modality {prompt_set.modality!r} is not in the text "
                             f"encoder's table ({', '.join(modalities)})")


def _draw_batches(dataset: Dataset, model_stages, config: TrainConfig, text_rows, modalities, rank: int,
                  step: int, device: torch.device) -> dict:
    batches = {}
    for index, (name, stage) in enumerate(model_stages.items()):
        generator = torch.Generator().manual_seed(step_seed(config.seed, rank, step, index))
        batch_size = config.stages[name].batch_size
        samples = [draw_sample(choose_case(dataset.cases, generator), stage.crop_size, stage.target_spacing,
                               config.sampling, generator) for _ in range(batch_size)]
        batches[name] = collate(samples, text_rows, modalities).to(device)
    return batches


def train(config: TrainConfig, resume: bool = False, device: str | None = None, max_steps: int | None = None,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train as configured; with `resume`, continue from the output folder's checkpoint.

    `max_steps` stops this run after that many steps (checkpointed; continue later with `resume`), without
    changing the schedule. Under torchrun every process calls this; rank 0 logs, checkpoints and exports the
    model folder (the weights as they are when the run ends).
    """
    if max_steps is not None and max_steps < 1:
        raise InputError(f"max_steps must be ≥ 1, got {max_steps}")
    if config.model_card is not None and not config.model_card.is_file():
        raise InputError(f"{config.model_card}: model card not found")
    started = time.perf_counter()
    checkpoint_path = config.output / CHECKPOINT_FILE
    if checkpoint_path.exists() and not resume:
        raise InputError(f"{checkpoint_path} exists: pass --resume to continue that run, or choose another output")
    stored = load_checkpoint(checkpoint_path) if resume else None
    if stored is not None:
        check_resumable(stored["config"], config.to_dict(), checkpoint_path)

    processes = start(device)
    try:
        return _run(config, stored, processes, max_steps, log, started)
    finally:
        stop(processes)


def _run(config: TrainConfig, stored: dict | None, processes: Processes, max_steps: int | None, log,
         started: float) -> TrainResult:
    device = processes.device
    model = initial_model(config)
    dataset = load_dataset(config.dataset, config.seed, model.orientation)
    modalities = model.text_encoder.config.modalities
    _check_modalities(dataset, modalities)
    texts = dataset.phrasings()
    text_rows = {text: row for row, text in enumerate(texts)}
    segmenter = Segmenter(model.nets, model.text_encoder, tower_features(model.text_encoder, texts),
                          config.train_text_head).to(device)
    first_step = 0
    if stored is not None:
        segmenter.load_state_dict(stored["model"])
        first_step = int(stored["step"])
    trainable = [p for p in segmenter.parameters() if p.requires_grad]
    settings = config.optimizer
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate(first_step, settings.cycles), betas=settings.betas,
                                  eps=settings.eps, weight_decay=settings.weight_decay)
    dtype = autocast_dtype(device, config.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    if stored is not None:
        optimizer.load_state_dict(stored["optimizer"])
        scaler.load_state_dict(stored["scaler"])
    network = segmenter
    if processes.distributed:
        # Some steps skip the prompt fusion (mc = None), leaving fusion_conv without gradients.
        network = DistributedDataParallel(segmenter, device_ids=[device.index] if device.type == "cuda" else None,
                                          find_unused_parameters=True)
    network.train()

    total = settings.steps
    end = total if max_steps is None else min(total, first_step + max_steps)
    checkpoint_path = config.output / CHECKPOINT_FILE
    if processes.is_main:
        log(f"training {config.name}: steps {first_step}..{end} of {total} on {processes.world_size} × {device}, "
            f"{len(dataset.cases)} cases, {len(texts)} phrasings, "
            f"{sum(p.numel() for p in trainable):,} trainable parameters")
    window, logged = [], []
    window_started = time.perf_counter()
    for step in range(first_step, end):
        torch.manual_seed(step_seed(config.seed, processes.rank, step, len(model.stages)))  # dropout
        batches = _draw_batches(dataset, model.stages, config, text_rows, modalities, processes.rank, step, device)
        fuse = np.random.default_rng(step_seed(config.seed, step)).random() >= config.sampling.prompts.no_fusion_prob
        lr = learning_rate(step, settings.cycles)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            outputs = network(batches, fuse)
        losses = {name: deep_supervision_loss(outputs[name], batches[name].targets, batches[name].query_mask)
                  for name in outputs}
        loss = sum(losses.values())
        if not scaler.is_enabled() and not torch.isfinite(loss):
            raise MedalSError(f"training diverged at step {step}: the loss is {loss.item()}; lower peak_lr")
        scaler.scale(loss).backward()
        if settings.grad_clip_norm:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trainable, settings.grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        window.append(torch.stack([losses[name].detach().float() for name in model.stages]))

        done = step + 1
        if done % config.log_every == 0 or done == end:
            means = mean_over_processes(torch.stack(window).mean(0), processes)
            seconds = (time.perf_counter() - window_started) / len(window)
            logged.append(float(means.sum()))
            if processes.is_main:
                _report(config.output, log, done, total, means, list(model.stages), lr, seconds)
            window, window_started = [], time.perf_counter()
        if processes.is_main and (done % config.checkpoint_every == 0 or done == end):
            save_checkpoint(checkpoint_path, done, segmenter, optimizer, scaler, config.to_dict())

    model_folder = None
    if processes.is_main and end > first_step:
        model_folder = export_model(config.output / MODEL_DIR, config, model)
        log(f"trained steps {first_step}..{end} of {total} in {(time.perf_counter() - started) / 60:.1f} min; "
            f"model written to {model_folder} (use it by this path, or copy it to {models_dir() / config.name} "
            f"to install it as {config.name!r})")
    elif processes.is_main:
        log(f"nothing to train: the checkpoint is already at step {first_step} of {total}")
    barrier(processes)
    return TrainResult(first_step, max(end, first_step), logged, checkpoint_path, model_folder,
                       time.perf_counter() - started, model)


def _report(output: Path, log, done: int, total: int, means: torch.Tensor, stages: list[str], lr: float,
            seconds: float) -> None:
    per_stage = {name: round(float(v), 5) for name, v in zip(stages, means)}
    details = ", ".join(f"{name} {v:.4f}" for name, v in per_stage.items())
    log(f"step {done}/{total}  loss {float(means.sum()):.4f} ({details})  lr {lr:.2e}  {seconds:.2f} s/step")
    output.mkdir(parents=True, exist_ok=True)
    with open(output / LOG_FILE, "a") as stream:
        stream.write(json.dumps({"step": done, "loss": round(float(means.sum()), 5), "stages": per_stage,
                                 "lr": lr, "seconds_per_step": round(seconds, 3)}) + "\n")

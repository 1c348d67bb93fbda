"""The training loop: seeded, resumable, checkpointed by steps and by minutes, DDP-ready.

    mrisuperres train CONFIG.yaml [--data DIR] [--runs DIR] [--resume] [--threads N] [--device cpu|cuda]
    torchrun --nproc_per_node 4 -m MRISuperResLib.training CONFIG.yaml ...   # several GPUs or CPU processes

Checkpoints go to `<runs>/<name>/checkpoint.pt` (network, optimizer, scheduler, random state, step);
`--resume` continues from it. The final weights go to `<runs>/<name>/<name>.pt` with `card.json`, the
model card; `--install` adds both to a models folder (the built-in one, or `--models-dir`).
Under `torchrun` it trains with DistributedDataParallel (nccl on CUDA, gloo on CPU).
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..errors import CancelledError, MRISuperResError
from ..models.architectures import ARCHITECTURES, build_architecture, macs_per_pixel
from ..models.registry import ModelRegistry, install_model, sha256_of
from ..scattering import Scattering
from .adversarial import AdversarialSettings, Critic, adversarial_term, critic_step
from .config import TrainingConfig, settings_from
from .losses import CompositeLoss
from .pairs import Degradations, cut_patches, degrade_instance, load_scans
from .priors import prepare
from .texture_inputs import placed_texture, texture_inputs


def split_batch(batch: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Patches (B, 4 + 2·context [+ 1], H, W) → lr (with its neighbouring slices after it), truth, reference,
    mask."""
    lr = torch.cat([batch[:, :1], batch[:, 4:4 + 2 * context]], dim=1)
    return lr, batch[:, 1:2], batch[:, 2:3], batch[:, 3:4]


def auxiliary_targets(batch: torch.Tensor, context: int) -> dict[str, torch.Tensor]:
    """What a network's intermediate outputs are supervised by, by output name: the structure branch by the
    truth, the first level by the halfway target when the patches carry one (after the neighbouring slices)."""
    targets = {"structure": batch[:, 1:2]}
    if batch.shape[1] > 4 + 2 * context:
        targets["halfway"] = batch[:, 4 + 2 * context:5 + 2 * context]
    return targets


def _patch_group(scans, config: TrainingConfig, degradations: Degradations,
                 rng: random.Random) -> tuple[np.ndarray, int]:
    """The patches of one freshly degraded instance, and its factor."""
    c = config
    for _ in range(100):
        instance = degrade_instance(rng.choice(scans), rng, degradations)
        patches = cut_patches(instance, c.patches_per_instance, c.patch_size, rng,
                              c.shift_probability, c.max_shift, c.absent_probability,
                              c.rotation_probability, c.max_rotation_degrees, c.context)
        if patches:
            return np.stack(patches), instance.factor
    raise MRISuperResError(f"No {c.patch_size}-pixel patches could be cut from the training volumes; "
                           "use a smaller patch_size or larger volumes.")


# What the background workers simulate from: set before the pool forks, so the scans are not pickled per task.
_WORKER_STATE: tuple | None = None


def _worker_group(seed: int) -> tuple[np.ndarray, int]:
    scans, config, degradations = _WORKER_STATE
    return _patch_group(scans, config, degradations, random.Random(seed))


class PatchBank:
    """A pool of patches from degraded instances (each with its thick-slice factor), refreshed one instance
    at a time, by this process or, with `config.data_workers`, by background processes as fast as they go."""

    def __init__(self, scans, config: TrainingConfig, rng: random.Random, halfway: bool = False) -> None:
        global _WORKER_STATE
        self.scans, self.config, self.rng = scans, config, rng
        self.degradations = Degradations.from_config(config, halfway)
        self.workers = self.pending = None
        if config.data_workers > 0:
            _WORKER_STATE = (scans, config, self.degradations)
            self.workers = multiprocessing.get_context("fork").Pool(config.data_workers)
            seeds = [rng.randrange(1 << 62) for _ in range(config.pool_instances)]
            self.groups = self.workers.map(_worker_group, seeds)
            self.pending = [self._submit() for _ in range(2 * config.data_workers)]
        else:
            self.groups = [self._fresh_group() for _ in range(config.pool_instances)]

    def _fresh_group(self) -> tuple[np.ndarray, int]:
        return _patch_group(self.scans, self.config, self.degradations, self.rng)

    def _submit(self):
        return self.workers.apply_async(_worker_group, (self.rng.randrange(1 << 62),))

    def refresh(self) -> None:
        if self.workers is None:
            self.groups[self.rng.randrange(len(self.groups))] = self._fresh_group()
            return
        for task in [t for t in self.pending if t.ready()]:
            self.pending.remove(task)
            self.groups[self.rng.randrange(len(self.groups))] = task.get()
            self.pending.append(self._submit())

    def close(self) -> None:
        if self.workers is not None:
            # Let the few tasks in flight finish instead of terminate(): a worker killed while it writes its
            # patches holds the result queue's lock, and terminate() then waits for it forever (a fresh-check
            # hung there, its workers already dead).
            self.workers.close()
            self.workers.join()
            self.workers = None

    def batch(self, size: int, same_factor: bool = False) -> tuple[torch.Tensor, int | None]:
        """A batch of patches; with `same_factor`, all of one thick-slice factor (texture transfer blurs the
        reference by it), which is returned too."""
        groups, factor = self.groups, None
        if same_factor:
            factor = self.groups[self.rng.randrange(len(self.groups))][1]
            groups = [g for g in self.groups if g[1] == factor]
        picks = [groups[self.rng.randrange(len(groups))][0] for _ in range(size)]
        return torch.from_numpy(np.stack([g[self.rng.randrange(len(g))] for g in picks])), factor


# The same patches in every run and resume, so that logged validation scores compare across them.
VALIDATION_SEED = 12345


def fixed_validation_set(scans, config: TrainingConfig, seed: int, inplane: bool = False
                         ) -> list[tuple[torch.Tensor, int]]:
    """Validation patches per thick-slice factor (2, 4, 6), or with `inplane` per in-plane factor (2, 4), the same
    at every evaluation."""
    rng = random.Random(seed)
    by_factor = []
    for factor in (2, 4) if inplane else (2, 4, 6):
        degradations = Degradations(factors=(factor,), inplane_probability=float(inplane), inplane_factors=(factor,))
        patches = []
        for scan in scans:
            instance = degrade_instance(scan, rng, degradations)
            patches += cut_patches(instance, 32, config.patch_size, rng, 0.0, config.max_shift, 0.0,
                                   context=config.context)
        if patches:
            by_factor.append((torch.from_numpy(np.stack(patches)), factor))
    return by_factor


def validation_sets(val_scans, config: TrainingConfig):
    """The fixed validation patches of a run: thick slices, and in-plane ones (None unless the config trains on
    in-plane pairs; validated under their own key and, like scripts/evaluate.py, along i and j)."""
    thick = fixed_validation_set(val_scans, config, VALIDATION_SEED)
    inplane = fixed_validation_set([_with_axes(scan, (0, 1)) for scan in val_scans], config, VALIDATION_SEED,
                                   inplane=True) if config.inplane_probability and val_scans else None
    return thick, inplane


def psnr_gain(network: torch.nn.Module, validation: list[tuple[torch.Tensor, int]], device: torch.device,
              scattering: Scattering | None = None) -> dict:
    """PSNR (data range 1, MSE pooled over all validation patches) of cubic and of the network with and
    without its reference (and, for texture transfer, with its reference as paired texture); pooled,
    because per-patch PSNR is infinite on blank background patches."""
    network.eval()
    errors: dict[str, list[torch.Tensor]] = {}
    with torch.inference_mode():
        for patches, factor in validation:
            lr, truth, ref, mask = (x.to(device) for x in split_batch(patches, getattr(network, "context", 0)))
            extra = {"factor": factor} if getattr(network, "takes_factor", False) else {}
            outputs = {"cubic": lr[:, :1], "model_ref": network(lr, ref, mask, **extra),
                       "model_noref": network(lr, torch.zeros_like(ref), torch.zeros_like(mask), **extra)}
            if scattering is not None:
                texture, _ = texture_inputs(lr, truth, ref, mask, factor, random.Random(0), scattering,
                                            probabilities={"paired": 1.0, "bank": 0.0})
                outputs["model_ref_texture"] = network(lr, ref, mask,
                                                       placed_texture(network, texture, lr.shape[-2:], scattering))
            for name, output in outputs.items():
                errors.setdefault(name, []).append(((output - truth) ** 2).flatten())
    network.train()
    return {name: float(-10 * torch.log10(torch.cat(e).mean())) for name, e in errors.items()}


def initialise_from(network: torch.nn.Module, source: str, models_dir: str | None = None) -> None:
    """Start from a registered model's weights, or from a weights file (`*.pt`): a texture-transfer network
    from its backbone (its texture branch starts at zero; so do a network's `zero_initialised_parts`), or a
    run continued on another machine from the weights it committed."""
    if source.endswith(".pt"):
        path = Path(source)
        if not path.is_file():
            raise MRISuperResError(f"initialise_from names the weights file '{source}', which does not exist.")
    else:
        registry = ModelRegistry(models_dir)
        path = registry.verified_weights(registry.get(source))
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = network.load_state_dict(state, strict=False)
    new_parts = ("texture.",) + tuple(getattr(network, "zero_initialised_parts", ()))
    if unexpected or any(not key.startswith(new_parts) for key in missing):
        raise MRISuperResError(f"The weights of {source} do not fit this architecture "
                               f"(missing {missing}, unexpected {unexpected}); check initialise_from.")
    print(f"initialised from {source}" + (f"; new: {', '.join(missing)}" if missing else ""), flush=True)


def _device(requested: str | None, local_rank: int) -> torch.device:
    if requested in (None, "auto"):
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise MRISuperResError("No CUDA GPU is available to this Python; train with --device cpu.")
    return torch.device(f"cuda:{local_rank}" if requested == "cuda" else requested)


def _learning_rate_schedule(config: TrainingConfig):
    """Linear warm-up over `warmup_steps` (a run continued from weights without its optimizer state), then
    ×0.3 at each milestone, or a half cosine from the full rate to 0 at `steps`."""
    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
        if config.lr_decay == "cosine":
            return warm * 0.5 * (1.0 + math.cos(math.pi * min(step, config.steps) / config.steps))
        return warm * 0.3 ** sum(step >= m for m in config.lr_milestones)
    return factor


def train(config: TrainingConfig, data_root: Path, runs_dir: Path, threads: int = 0, device: str | None = None,
          resume: bool = False, install: bool = False, models_dir: str | None = None,
          config_name: str = "", train_scans: list | None = None) -> Path:
    """Train `config`; returns the run folder holding the weights and `card.json`. `train_scans`: the training
    scans already loaded (as `load_scans` makes them, e.g. from scripts/device_train.py's pack) instead of
    reading `config.train` from `data_root`."""
    if config.architecture not in ARCHITECTURES:
        raise MRISuperResError(f"Unknown architecture '{config.architecture}'; choose one of: {', '.join(ARCHITECTURES)}.")
    config.check_files(data_root, ("train", "val") if train_scans is None else ("val",))
    distributed = "LOCAL_RANK" in os.environ
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if distributed else 0
    if threads:
        torch.set_num_threads(threads)
    torch_device = _device(device, int(os.environ.get("LOCAL_RANK", 0)))
    seed = config.seed + rank
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)

    run_dir = Path(runs_dir) / config.name
    checkpoint = run_dir / "checkpoint.pt"
    if checkpoint.exists() and not resume:
        raise MRISuperResError(f"The run '{run_dir}' already has a checkpoint; pass --resume to continue it, "
                               "or choose another --runs folder.")
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        network = build_architecture(config.architecture, config.arguments)
    except TypeError as error:
        raise MRISuperResError(f"The arguments do not fit architecture '{config.architecture}' ({error}).") from None
    network = network.to(torch_device, memory_format=torch.channels_last)
    # The 2.5D context the patches must carry is the network's, also when the config leaves it to the default.
    if getattr(network, "context", 0):
        config.arguments = {**config.arguments, "context": network.context}
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _learning_rate_schedule(config))
    critic = critic_optimizer = None
    if config.adversarial is not None:
        adversarial = settings_from(AdversarialSettings, config.adversarial, "adversarial")
        critic = Critic(adversarial.features).to(torch_device)
        critic_optimizer = torch.optim.Adam(critic.parameters(), lr=adversarial.learning_rate, betas=(0.0, 0.9))
    rng = random.Random(seed)
    step = 0
    if resume and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if critic is not None and "critic" in state:
            critic.load_state_dict(state["critic"])
            critic_optimizer.load_state_dict(state["critic_optimizer"])
        rng.setstate(state["rng"])
        step = state["step"]
        print(f"resumed at step {step}" + (f"; the config's {config.steps} steps are done, so its weights and card are "
                                           "written without training (raise steps to train on)"
                                           if step >= config.steps else ""), flush=True)
    elif config.initialise_from:
        initialise_from(network, config.initialise_from, models_dir)

    started = time.time()
    # Networks with several supervised levels (the progressive network) learn their first level from the
    # acquisition simulated at half the factor.
    if train_scans is None:
        train_scans = load_scans(data_root, config.pair_specs("train"))
    bank = PatchBank(train_scans, config, rng,
                     halfway="halfway" in getattr(network, "auxiliary_outputs", ()))
    val_scans = load_scans(data_root, config.pair_specs("val")) if config.val else []
    validation, validation_inplane = validation_sets(val_scans, config)
    print(f"bank ready in {time.time() - started:.0f} s; {sum(len(p) for p, _ in validation)} validation patches",
          flush=True)
    # Pre-training stages run once, in the first process; the others wait, then load what it wrote. Before
    # the DDP wrap, which copies the first process's weights to every process.
    if distributed and rank != 0:
        dist.barrier()
    extra_loss, stages_note = prepare(config, network, bank, torch_device, run_dir,
                                      fresh=step == 0 and not config.initialise_from)
    if distributed and rank == 0:
        dist.barrier()
    model = torch.nn.parallel.DistributedDataParallel(network) if distributed else network
    loss_fn = CompositeLoss(**config.loss).to(torch_device)
    # Texture transfer: scattering features, matching and swapping per batch, as at inference.
    scattering = Scattering() if config.arguments.get("texture_transfer") else None
    # Networks that degrade their reference as the input was (DAASR) need each batch's factor.
    takes_factor = getattr(network, "takes_factor", False)
    log = open(run_dir / "log.jsonl", "a") if rank == 0 else None
    running, running_parts = [], []
    last_checkpoint = time.time()
    bar = tqdm(total=config.steps, initial=step, desc=config.name, disable=None if rank == 0 else True,
               unit="step", dynamic_ncols=True)
    training_started, first_step = time.time(), step
    autocast = torch.autocast(torch_device.type, dtype=torch.bfloat16, enabled=config.bf16)
    try:
        while step < config.steps:
            if _time_is_up(config, training_started, distributed, torch_device):
                bar.write(f"time limit of {config.time_limit_minutes:g} minutes reached at step {step}")
                break
            if step % config.refresh_every == 0 and step:
                bank.refresh()
            batch, factor = bank.batch(config.batch_size, same_factor=scattering is not None or takes_factor)
            batch = batch.to(torch_device, non_blocking=True)
            lr, truth, ref, mask = split_batch(batch, config.context)
            with autocast:
                loss, parts, output = _forward(model, network, loss_fn, config, batch, (lr, truth, ref, mask), factor,
                                               scattering, rng)
                if extra_loss is not None:
                    extra, extra_parts = extra_loss(lr, output)
                    loss = loss + extra
                    parts.update(extra_parts)
            if critic is not None:
                # One critic step per generator step, then the generator's adversarial term (equations 3 and 8).
                critic_value = critic_step(critic, critic_optimizer, truth, output, adversarial.gradient_penalty)
                generator_term = adversarial_term(critic, output)
                loss = loss + adversarial.weight * generator_term
                parts.update(critic=critic_value, adversarial=generator_term.item())
            running_parts.append(parts)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            bar.update(1)
            running.append(loss.item())
            due = step % config.checkpoint_every == 0 or time.time() - last_checkpoint > 60 * config.checkpoint_minutes
            if rank == 0 and (due or step == config.steps):
                _save_checkpoint(checkpoint, network, optimizer, scheduler, rng, step, critic, critic_optimizer)
                last_checkpoint = time.time()
                if bar.disable:  # no terminal (a log file): a line per checkpoint instead of the bar
                    print(f"step {step} of {config.steps}, checkpoint written "
                          f"({(time.time() - training_started) / max(1, step - first_step):.2f} s a step)", flush=True)
            if rank == 0 and (step % config.validate_every == 0 or step == config.steps):
                record = {"step": step, "loss": float(np.mean(running)),
                          **{name: float(np.mean([p[name] for p in running_parts])) for name in running_parts[0]},
                          "seconds": round(time.time() - started),
                          "val_psnr": psnr_gain(network, validation, torch_device, scattering) if validation else {}}
                if validation_inplane:
                    record["val_psnr_inplane"] = psnr_gain(network, validation_inplane, torch_device, scattering)
                running, running_parts = [], []
                bar.write(json.dumps(record))
                log.write(json.dumps(record) + "\n")
                log.flush()
    except KeyboardInterrupt:
        # Ctrl+C or SIGTERM: keep what was learnt since the last checkpoint, and say how to go on.
        if rank == 0 and step:
            _save_checkpoint(checkpoint, network, optimizer, scheduler, rng, step, critic, critic_optimizer)
        raise CancelledError(f"Training stopped at step {step} of {config.steps}; '{checkpoint}' holds it: continue "
                             "with --resume (no weights or card were written).") from None
    finally:
        bar.close()
        bank.close()

    if rank == 0:
        if step < config.steps:  # stopped by the time limit
            _save_checkpoint(checkpoint, network, optimizer, scheduler, rng, step, critic, critic_optimizer)
        weights = run_dir / f"{config.name}.pt"
        torch.save({k: v.cpu().contiguous() for k, v in network.state_dict().items()}, weights)
        card = _card(config, network, weights, step, torch_device, config_name, stages_note, train_scans,
                     psnr_gain(network, validation, torch_device, scattering) if validation else {},
                     psnr_gain(network, validation_inplane, torch_device, scattering) if validation_inplane else None,
                     bank.degradations)
        (run_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")
        print(json.dumps(card, indent=2))
        if install:
            manifest = install_model(weights, card, models_dir)
            print(f"installed {card['name']} into {manifest}")
    if distributed:
        dist.destroy_process_group()
    return run_dir


def _time_is_up(config: TrainingConfig, started: float, distributed: bool, device: torch.device) -> bool:
    """Whether the time limit has passed; under DDP, for every process at the same step (one that stopped
    alone would leave the others waiting in the gradient exchange)."""
    if not config.time_limit_minutes:
        return False
    up = time.time() - started > 60 * config.time_limit_minutes
    if distributed:
        flag = torch.tensor([float(up)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        up = bool(flag.item())
    return up


def _forward(model, network, loss_fn, config: TrainingConfig, batch, inputs, factor, scattering, rng
             ) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """One batch through the network and the loss: (loss, its parts, output)."""
    lr, truth, ref, mask = inputs
    takes_factor = getattr(network, "takes_factor", False)
    if getattr(network, "auxiliary_outputs", ()):
        output, intermediates = model(lr, ref, mask, auxiliary=True, **({"factor": factor} if takes_factor else {}))
        loss, parts = loss_fn(output, truth)
        targets = auxiliary_targets(batch, config.context)
        for name, intermediate in intermediates.items():
            extra = nn.functional.l1_loss(intermediate, targets[name])
            loss = loss + config.auxiliary_weight * extra
            parts[f"l1_{name}"] = extra.item()
    elif scattering is None:
        output = model(lr, ref, mask)
        loss, parts = loss_fn(output, truth)
    else:
        texture, has_texture = texture_inputs(lr, truth, ref, mask, factor, rng, scattering,
                                              probabilities=config.texture)
        output = model(lr, ref, mask, placed_texture(network, texture, lr.shape[-2:], scattering))
        loss, parts = loss_fn(output, truth, texture[:, :-1], has_texture)
    return loss, parts, output


def _with_axes(scan, axes: tuple[int, ...]):
    return dataclasses.replace(scan, spec=dataclasses.replace(scan.spec, axes=axes))


def _save_checkpoint(path: Path, network, optimizer, scheduler, rng: random.Random, step: int,
                     critic=None, critic_optimizer=None) -> None:
    staging = path.with_suffix(".tmp")
    state = {"network": network.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "rng": rng.getstate(), "step": step}
    if critic is not None:
        state.update(critic=critic.state_dict(), critic_optimizer=critic_optimizer.state_dict())
    torch.save(state, staging)
    staging.replace(path)  # a run killed while saving keeps its previous checkpoint


def _card(config: TrainingConfig, network, weights: Path, step: int, device: torch.device, config_name: str, note: str,
          train_scans: list, scores: dict, scores_inplane: dict | None, degradations: Degradations) -> dict:
    finest = [min(scan.template.spacing) for scan in train_scans]
    card = {
        "name": config.name, "title": config.title or config.name, "description": config.description,
        "architecture": config.architecture, "arguments": config.arguments,
        "weights": weights.name, "sha256": sha256_of(weights),
        "parameters": sum(p.numel() for p in network.parameters()),
        "macs_per_pixel": macs_per_pixel(network),
        "uses_reference": config.uses_reference, "degradation": config.degradation,
        "factors": config.factors,
        **({"inplane_factors": list(degradations.inplane_factors)} if degradations.inplane_probability else {}),
        **({"spacings": [round(min(finest), 3), round(max(finest), 3)]} if finest else {}),
        "training_data": "; ".join(sorted({e["target"].split("/")[-2] for e in config.train}))
                         + " (see README acknowledgements for licences)",
        "training": f"{step} steps of {config.batch_size}×{config.patch_size}² patches, "
                    f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, "
                    f"config {config_name or config.name}, seed {config.seed}"
                    + (f", fine-tuned from {Path(config.initialise_from).stem}" if config.initialise_from else "")
                    + (", with a WGAN-GP critic" if config.adversarial is not None else "") + note,
        "validation": {"patch_psnr_db": scores,
                       **({"patch_psnr_db_inplane": scores_inplane} if scores_inplane else {})},
    }
    if config.reference_modes:
        card["reference_modes"] = config.reference_modes
    return card

"""Training of the three CGRP stages and their joint fine-tuning.

Every stage: fixed seeds, a tqdm progress bar, a resumable checkpoint in ``runs/<stage>/last.pt``
every ``checkpoint_every`` iterations, an optional wall-clock budget (``minutes``) after which
it saves and stops, and the final weights in ``<out>/<stage>.pt`` (``joint`` writes
registration.pt and fusion.pt). Defaults finish each stage in <= 40 min on 2 CPU cores.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, asdict
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import losses
from .data import load_split
from .filters import gradient_magnitude
from .deform import random_displacement
from .image import resize, working_shape
from .models import default_model_path, load_model, save_model
from .networks import FusionNet, Generator, PatchDiscriminator, RegistrationNet
from .warp import invert_flow, valid_mask, warp, warp_numpy

STAGE_DEFAULTS = {
    # iterations are sized for ~10-30 min on 2 CPU cores (see models/MODEL_CARD.md for measured times)
    "generator": dict(iterations=700, batch=6, crop=(128, 128), lr=2e-4),
    "registration": dict(iterations=1000, batch=4, crop=(144, 256), lr=1e-4, preset="severe"),
    "fusion": dict(iterations=800, batch=6, crop=(128, 128), lr=1e-3),
    "joint": dict(iterations=300, batch=4, crop=(144, 256), lr=1e-4, preset="severe"),
}


@dataclass
class TrainConfig:
    stage: str
    data: Path | None = None
    out: Path = Path("models")
    run_dir: Path = Path("runs")
    iterations: int = 0
    batch: int = 0
    crop: tuple | None = None
    lr: float = 0.0
    preset: str = "severe"
    working_size: tuple = (256, 320)
    seed: int = 0
    minutes: float | None = None
    resume: bool = True
    device: str = "auto"
    flow_supervision: bool = True
    checkpoint_every: int = 100
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        for key, value in STAGE_DEFAULTS[self.stage].items():
            if not getattr(self, key):
                setattr(self, key, value)
        self.out, self.run_dir = Path(self.out), Path(self.run_dir)


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def bgr_to_luma(bgr: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W BGR -> N x 1 x H x W luminance (ITU-R BT.601, as OpenCV's YCrCb)."""
    return 0.114 * bgr[:, 0:1] + 0.587 * bgr[:, 1:2] + 0.299 * bgr[:, 2:3]


def prepare(pairs, working_size):
    """Resize each (visible, thermal) pair to the working resolution; float32 [0, 1] arrays."""
    out = []
    for name, visible, thermal in pairs:
        (h, w), _ = working_shape(*visible.shape[:2], max_size=working_size)
        out.append((name, resize(visible, (h, w)).astype(np.float32) / 255.0,
                    resize(thermal, (h, w)).astype(np.float32) / 255.0))
    return out


def random_crop_box(rng, shape, crop):
    h, w = shape
    ch, cw = min(crop[0], h), min(crop[1], w)
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    return slice(y, y + ch), slice(x, x + cw)


def crop_padded(array, box, crop, reflect=True):
    """array[box], padded at the bottom/right to `crop` when the image is smaller than the crop
    (reflected for images; zeros for flows and validity masks, so padding never counts)."""
    out = array[box]
    dh, dw = crop[0] - out.shape[0], crop[1] - out.shape[1]
    if dh > 0 or dw > 0:
        pad = [(0, max(dh, 0)), (0, max(dw, 0))] + [(0, 0)] * (out.ndim - 2)
        out = np.pad(out, pad, mode="reflect" if reflect else "constant")
    return np.ascontiguousarray(out)


class Stage:
    """Shared machinery: data, models, optimisers, resumable loop."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.device = pick_device(cfg.device)
        self.images = prepare(load_split(cfg.data, "train"), cfg.working_size)
        self.modules: dict[str, torch.nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    def t(self, array):
        """H x W[ x C] numpy -> 1 x C x H x W tensor on the training device."""
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).unsqueeze(0).to(self.device)

    def crops(self, keys=("visible", "thermal")):
        """A batch of aligned random crops (with random horizontal flips)."""
        vis, th = [], []
        for _ in range(self.cfg.batch):
            _, v, t = self.images[int(self.rng.integers(len(self.images)))]
            box = random_crop_box(self.rng, t.shape, self.cfg.crop)
            v, t = crop_padded(v, box, self.cfg.crop), crop_padded(t, box, self.cfg.crop)
            if self.rng.random() < 0.5:
                v, t = v[:, ::-1], t[:, ::-1]
            vis.append(self.t(v))
            th.append(self.t(t))
        return torch.cat(vis), torch.cat(th)

    # -- loop ------------------------------------------------------------------------------------
    def checkpoint_path(self) -> Path:
        return self.cfg.run_dir / self.cfg.stage / "last.pt"

    def save_checkpoint(self, iteration: int, elapsed: float):
        path = self.checkpoint_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"iteration": iteration, "elapsed": elapsed,
                    "modules": {k: m.state_dict() for k, m in self.modules.items()},
                    "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                    "rng": self.rng.bit_generator.state}, path)

    def run(self):
        cfg, start, elapsed_before = self.cfg, 0, 0.0
        path = self.checkpoint_path()
        if cfg.resume and path.is_file():
            state = torch.load(path, map_location=self.device, weights_only=False)
            for k, m in self.modules.items():
                m.load_state_dict(state["modules"][k])
            for k, o in self.optimizers.items():
                o.load_state_dict(state["optimizers"][k])
            self.rng.bit_generator.state = state["rng"]
            start, elapsed_before = state["iteration"], state["elapsed"]
            print(f"[{cfg.stage}] resuming from {path} at iteration {start}", file=sys.stderr)
        for m in self.modules.values():
            m.train()
        t0 = time.time()
        logs, iteration = {}, start
        bar = tqdm(range(start, cfg.iterations), initial=start, total=cfg.iterations, desc=cfg.stage,
                   dynamic_ncols=True, mininterval=2.0)
        for iteration in bar:
            logs = self.step(iteration)
            bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()}, refresh=False)
            elapsed = elapsed_before + time.time() - t0
            if (iteration + 1) % cfg.checkpoint_every == 0:
                self.save_checkpoint(iteration + 1, elapsed)
            if cfg.minutes is not None and elapsed > cfg.minutes * 60:
                print(f"[{cfg.stage}] time budget of {cfg.minutes} min reached at iteration {iteration + 1}",
                      file=sys.stderr)
                break
        iteration = min(iteration + 1, cfg.iterations) if cfg.iterations > start else start
        elapsed = elapsed_before + time.time() - t0
        self.save_checkpoint(iteration, elapsed)
        meta = dict(stage=cfg.stage, iterations=iteration, wall_time_s=round(elapsed, 1),
                    device=str(self.device), torch=torch.__version__, final_losses=logs,
                    config={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
                    command=" ".join(sys.argv))
        for m in self.modules.values():
            m.eval()
        self.export(meta)
        return meta

    def step(self, iteration: int) -> dict:
        raise NotImplementedError

    def export(self, meta: dict):
        raise NotImplementedError


class GeneratorStage(Stage):
    """visible -> pseudo-thermal. Loss: L1 + SSIM to the aligned thermal, edge consistency with the
    visible image, LSGAN patch adversarial term, and a Gram-matrix style term on the
    discriminator's own features (our trainable stand-in for the paper's VGG style loss)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.config = dict(width=16, blocks=4)
        self.modules = {"generator": Generator(**self.config).to(self.device),
                        "discriminator": PatchDiscriminator().to(self.device)}
        self.optimizers = {k: torch.optim.Adam(m.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
                           for k, m in self.modules.items()}

    def step(self, iteration):
        g, d = self.modules["generator"], self.modules["discriminator"]
        visible, thermal = self.crops()
        fake = g(visible)
        # discriminator (least squares GAN)
        loss_d = 0.5 * (((d(thermal) - 1) ** 2).mean() + (d(fake.detach()) ** 2).mean())
        self.optimizers["discriminator"].zero_grad()
        loss_d.backward()
        self.optimizers["discriminator"].step()
        # generator
        logits, feat_fake = d(fake, return_features=True)
        with torch.no_grad():
            _, feat_real = d(thermal, return_features=True)
        adv = ((logits - 1) ** 2).mean()
        style = sum(F.l1_loss(losses.gram(a), losses.gram(b)) for a, b in zip(feat_fake, feat_real))
        pixel = F.l1_loss(fake, thermal)
        ssim = losses.ssim_loss(fake, thermal)
        edge = 1.0 - losses.local_ncc(gradient_magnitude(fake), gradient_magnitude(bgr_to_luma(visible)), window=15)
        loss = 10.0 * pixel + 2.0 * ssim + 0.5 * edge + 0.05 * adv + 10.0 * style
        self.optimizers["generator"].zero_grad()
        loss.backward()
        self.optimizers["generator"].step()
        return dict(l1=pixel.item(), ssim=ssim.item(), edge=edge.item(), adv=adv.item(), d=loss_d.item())

    def export(self, meta):
        save_model(self.cfg.out / "generator.pt", "generator", self.modules["generator"], self.config, meta)


class RegistrationStage(Stage):
    """thermal warped by random `preset` deformations -> flow onto the frozen generator's pseudo-thermal.

    Loss: (1 - local NCC) between registered thermal and pseudo-thermal + flow smoothness, plus
    (unless ``flow_supervision`` is off) multi-level end-point error against the known inverse
    of the synthetic displacement.

    Curriculum: learning cross-modal matching from scratch is too slow for a CPU budget, so in a
    share of each batch the fixed image is the aligned *real* thermal (a mono-modal pair, quick to
    learn); that share decays linearly from 100 % to ``MONO_FLOOR`` over the first
    ``MONO_WARMUP`` of training, after which the pseudo-thermal dominates as at inference.
    """

    MONO_WARMUP, MONO_FLOOR = 0.25, 0.2

    def __init__(self, cfg):
        super().__init__(cfg)
        generator = load_model(cfg.extra.get("generator", default_model_path("generator")), "generator")
        generator.to(self.device)
        with torch.no_grad():  # the generator is frozen: compute each pseudo-thermal once
            self.pseudo = [generator(self.t(v))[0, 0].cpu().numpy() for _, v, _ in self.images]
        self.luma = [cv2.cvtColor(v, cv2.COLOR_BGR2YCrCb)[:, :, 0] for _, v, _ in self.images]
        self.config = {}
        net = RegistrationNet()
        if cfg.extra.get("init"):  # fine-tune from earlier weights; the curriculum starts at its floor
            net = load_model(cfg.extra["init"], "registration")
            self.MONO_WARMUP = 0.0
        self.modules = {"registration": net.to(self.device)}
        self.optimizers = {"registration": torch.optim.Adam(self.modules["registration"].parameters(), lr=cfg.lr)}

    def mono_share(self, iteration: int) -> float:
        progress = iteration / max(1e-9, self.MONO_WARMUP * self.cfg.iterations)
        return max(self.MONO_FLOOR, 1.0 - progress)

    def misaligned_batch(self, iteration: int):
        """Batch of (visible luminance, fixed, aligned thermal, misaligned thermal, gt flow, valid,
        global-stage flow) crops; fixed is the pseudo-thermal, or the aligned thermal in the
        curriculum's share (then the aligned thermal also stands in for the visible luminance: a
        fully mono-modal pair). The global stage sees the whole image, as at inference."""
        cols = [[] for _ in range(7)]
        share = self.mono_share(iteration)
        net = self.modules["registration"]
        for _ in range(self.cfg.batch):
            i = int(self.rng.integers(len(self.images)))
            _, v, t = self.images[i]
            v = self.luma[i]
            mono = self.rng.random() < share
            p = t if mono else self.pseudo[i]
            v = t if mono else v
            if self.rng.random() < 0.5:
                v, t, p = v[:, ::-1], t[:, ::-1], p[:, ::-1]
            d, _ = random_displacement(*t.shape, self.cfg.preset, self.rng)
            moving = warp_numpy(np.ascontiguousarray(t), d)
            gamma = float(np.exp(self.rng.uniform(-0.3, 0.3)))  # photometric robustness
            moving = np.clip(moving, 0, 1) ** gamma
            flow = invert_flow(d, iterations=20)
            valid = valid_mask(flow).astype(np.float32)
            initial = net.initial_flow(self.t(np.ascontiguousarray(v)), self.t(moving))[0].cpu().numpy().transpose(1, 2, 0)
            box = random_crop_box(self.rng, t.shape, self.cfg.crop)
            for k, (col, arr) in enumerate(zip(cols, (v, p, t, moving, flow, valid, initial))):
                col.append(self.t(crop_padded(arr, box, self.cfg.crop, reflect=k < 4)))
        return [torch.cat(c) for c in cols]

    def registration_loss(self, visible_y, pseudo, moving, gt_flow, valid, initial=None):
        net = self.modules["registration"]
        flow, levels = net(pseudo, visible_y, moving, initial)
        registered = warp(moving, flow)
        ncc = 1.0 - losses.local_ncc(registered, pseudo, window=9, mask=valid)
        smooth = losses.smoothness(flow)
        loss = ncc + 0.05 * smooth
        logs = dict(ncc=ncc.item(), smooth=smooth.item())
        epe = losses.masked_epe(flow, gt_flow, valid)
        logs["epe"] = epe.item()
        if self.cfg.flow_supervision:
            sup = epe
            for k, level_flow in enumerate(reversed(levels)):  # fine -> coarse, level k at 1/2^(k+1)
                factor = 2 ** (k + 1)
                gt_k = F.avg_pool2d(gt_flow, factor) / factor
                valid_k = (F.avg_pool2d(valid, factor) > 0.99).float()
                sup = sup + 0.5 * factor * losses.masked_epe(level_flow, gt_k, valid_k) / (k + 1)
            loss = loss + 0.1 * sup
        return loss, registered, logs

    def step(self, iteration):
        visible_y, pseudo, _, moving, gt_flow, valid, initial = self.misaligned_batch(iteration)
        loss, _, logs = self.registration_loss(visible_y, pseudo, moving, gt_flow, valid, initial)
        opt = self.optimizers["registration"]
        for group in opt.param_groups:  # cosine decay to 5 % of the initial rate
            group["lr"] = self.cfg.lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * iteration / self.cfg.iterations)))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.modules["registration"].parameters(), 5.0)
        opt.step()
        return logs

    def export(self, meta):
        meta["flow_supervision"] = self.cfg.flow_supervision
        save_model(self.cfg.out / "registration.pt", "registration", self.modules["registration"], self.config, meta)


class FusionStage(Stage):
    """Aligned pairs -> fused luminance; unsupervised SSIM + intensity + gradient loss."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.config = dict(channels=16)
        self.modules = {"fusion": FusionNet(**self.config).to(self.device)}
        self.optimizers = {"fusion": torch.optim.Adam(self.modules["fusion"].parameters(), lr=cfg.lr)}

    def step(self, iteration):
        visible, thermal = self.crops()
        y = bgr_to_luma(visible)
        loss, logs = losses.fusion_loss(self.modules["fusion"](y, thermal), y, thermal)
        self.optimizers["fusion"].zero_grad()
        loss.backward()
        self.optimizers["fusion"].step()
        return logs

    def export(self, meta):
        save_model(self.cfg.out / "fusion.pt", "fusion", self.modules["fusion"], self.config, meta)


class JointStage(RegistrationStage):
    """Fine-tunes registration and fusion together on synthetic misalignments: the fusion loss
    is taken against the aligned thermal, so registration errors show up as fusion errors."""

    def __init__(self, cfg):
        super().__init__(cfg)
        reg = load_model(cfg.extra.get("registration", default_model_path("registration")), "registration")
        fus = load_model(cfg.extra.get("fusion", default_model_path("fusion")), "fusion")
        self.modules = {"registration": reg.to(self.device), "fusion": fus.to(self.device)}
        self.optimizers = {"joint": torch.optim.Adam([p for m in self.modules.values() for p in m.parameters()],
                                                     lr=cfg.lr)}

    def step(self, iteration):
        y, pseudo, aligned, moving, gt_flow, valid, initial = self.misaligned_batch(iteration)
        reg_loss, registered, logs = self.registration_loss(y, pseudo, moving, gt_flow, valid, initial)
        fused = self.modules["fusion"](y, registered)
        fus_loss, fus_logs = losses.fusion_loss(fused, y, aligned)
        loss = reg_loss + fus_loss
        self.optimizers["joint"].zero_grad()
        loss.backward()
        self.optimizers["joint"].step()
        logs.update(fus_logs)
        return logs

    def export(self, meta):
        save_model(self.cfg.out / "registration.pt", "registration", self.modules["registration"], {}, meta)
        save_model(self.cfg.out / "fusion.pt", "fusion", self.modules["fusion"], dict(channels=16), meta)


STAGES = {"generator": GeneratorStage, "registration": RegistrationStage, "fusion": FusionStage,
          "joint": JointStage}


def train(cfg: TrainConfig) -> dict:
    """Run one stage; returns the metadata written into the model file."""
    if cfg.extra.get("threads"):
        torch.set_num_threads(int(cfg.extra["threads"]))
    return STAGES[cfg.stage](cfg).run()

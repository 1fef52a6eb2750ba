"""Training of the three CGRP stages and their joint fine-tuning.

Every stage: fixed seeds, a tqdm progress bar, a resumable checkpoint in ``runs/<stage>/last.pt``
every ``checkpoint_every`` iterations and on Ctrl-C, an optional wall-clock budget of the run
(``minutes``: a resumed run trains that long more) after which it saves and stops, and the final
weights in ``<out>/<stage>.pt`` (``joint`` writes
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
from ..core.backends import resolve_device
from ..core.data import default_dataset_root, load_split, replaced_on_success, shipped_folder, unwritable_reason
from ..core.deform import PRESETS, Preset, random_displacement
from ..core.errors import CgrpError, InputError
from ..core.filters import gradient_magnitude
from ..core.image import luminance, pad_to, resize, working_shape
from ..core.models import default_model_path, load_model, model_config, save_model
from ..core.align import affine_flow, window_offsets
from ..core.networks import SIZE_MULTIPLE, FusionNet, Generator, PatchDiscriminator, RegistrationNet
from ..core.warp import invert_flow, pixel_grid, valid_mask, warp, warp_numpy

TRAINING_DATASETS = ("roadscene", "m3svd")  # train splits; other_cameras is evaluation only

STAGE_DEFAULTS = {
    # iterations are sized for ~10-30 min on 2 CPU cores (see models/MODEL_CARD.md for measured times)
    "generator": dict(iterations=700, batch=6, crop=(128, 128), lr=2e-4),
    "global": dict(iterations=3000, batch=8, crop=(160, 224), lr=1e-3, preset="mix"),
    "local": dict(iterations=3000, batch=8, crop=(160, 224), lr=1e-3, preset="residual"),
    "registration": dict(iterations=1000, batch=4, crop=(144, 256), lr=1e-4, preset="mix"),
    "fusion": dict(iterations=800, batch=6, crop=(128, 128), lr=1e-3),
    "joint": dict(iterations=300, batch=4, crop=(144, 256), lr=1e-4, preset="mix"),
}

# Misalignments seen in training, as (probability, preset): from none to beyond 'severe' and the
# peer protocol, so the registration learns to leave aligned pairs alone as well as to undo large
# warps. 'mix-small' weights aligned and slightly misaligned pairs more (dense-level fine-tuning).
# 'residual': what is left after the global stage (its affine is good to about half an 8-px cell),
# plus the elastic part, for the local matcher.
_WIDE = Preset(translation=0.07, rotation_deg=12.0, scale=0.06, elastic=0.02)
_RESIDUAL = Preset(translation=0.025, rotation_deg=1.5, scale=0.02, elastic=0.02)
TRAINING_MIXES = {
    "mix": ((0.10, "none"), (0.15, "mild"), (0.25, "moderate"), (0.30, "severe"), (0.20, _WIDE)),
    "mix-small": ((0.20, "none"), (0.25, "mild"), (0.25, "moderate"), (0.15, "severe"), (0.15, _WIDE)),
    "residual": ((0.15, "none"), (0.25, "mild"), (0.60, _RESIDUAL)),
}


def draw_preset(rng: np.random.Generator, preset):
    """`preset` itself, or for a name of TRAINING_MIXES one drawn from that mix."""
    if preset not in TRAINING_MIXES:
        return preset
    mix = TRAINING_MIXES[preset]
    weights = np.array([w for w, _ in mix])
    return mix[int(rng.choice(len(mix), p=weights / weights.sum()))][1]


def augment_pair(rng: np.random.Generator, visible: np.ndarray, thermal: np.ndarray, *others: np.ndarray):
    """Widen the domain beyond the training rigs (float32 [0, 1] images, BGR and mono).

    Resolution and aspect (independent x/y rescale), blur, noise, gamma, grey visible,
    thermal polarity (white-hot / black-hot) and 16-bit-like gain (contrast stretch or squeeze).
    `others` (e.g. the visible image's pseudo-thermal) get the same geometry, no photometry.
    Returns (visible, thermal, *others).
    """
    h, w = thermal.shape[:2]
    sy, sx = np.exp(rng.uniform(-0.25, 0.2, size=2))
    size = (max(32, int(round(w * sx))), max(32, int(round(h * sy))))
    visible, thermal, *others = (cv2.resize(a, size, interpolation=cv2.INTER_AREA)
                                 for a in (visible, thermal) + others)
    if rng.random() < 0.2:
        visible = np.repeat(luminance(visible)[:, :, None], 3, axis=2)
    if rng.random() < 0.15:
        thermal = 1.0 - thermal
    if rng.random() < 0.3:
        low, high = rng.uniform(0.0, 0.25), rng.uniform(0.75, 1.0)
        thermal = (thermal - low) / (high - low) if rng.random() < 0.5 else low + thermal * (high - low)
    out = []
    for image in (visible, thermal):
        if rng.random() < 0.3:
            image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.5))
        image = np.clip(image, 0.0, 1.0) ** np.exp(rng.uniform(-0.4, 0.4))
        if rng.random() < 0.3:
            image = image + rng.normal(0.0, rng.uniform(0.005, 0.03), image.shape)
        out.append(np.clip(image, 0.0, 1.0).astype(np.float32))
    return (out[0], out[1], *others)


@dataclass
class TrainConfig:
    stage: str
    data: list | None = None               # dataset folders (train splits); None: roadscene + m3svd
    out: Path = Path("models")
    run_dir: Path = Path("runs")
    iterations: int = 0
    batch: int = 0
    crop: tuple | None = None
    lr: float = 0.0
    preset: str = ""                       # deformations (a preset or a TRAINING_MIXES name); "": the stage's
    working_size: tuple = (256, 320)
    seed: int = 0
    minutes: float | None = None
    resume: bool = True
    device: str = "auto"
    flow_supervision: bool = True
    similarity_weight: float = 1.0         # registration: weight of (1 - local NCC) to the pseudo-thermal
    threshold_samples: int = 160           # global/local: fresh training pairs the confidence threshold is chosen on
    checkpoint_every: int = 100
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        for key, value in STAGE_DEFAULTS[self.stage].items():
            if not getattr(self, key):
                setattr(self, key, value)
        self.out, self.run_dir = Path(self.out), Path(self.run_dir)
        if self.data is None:
            self.data = [default_dataset_root().parent / name for name in TRAINING_DATASETS]
        elif isinstance(self.data, (str, Path)):
            self.data = [self.data]
        self.data = [Path(d) for d in self.data]
        if self.preset and self.preset not in PRESETS and self.preset not in TRAINING_MIXES:
            raise InputError(f"unknown preset '{self.preset}': expected one of {', '.join(sorted(PRESETS))} or a "
                             f"training mix ({', '.join(TRAINING_MIXES)})")


def bgr_to_luma(bgr: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W BGR -> N x 1 x H x W luminance (ITU-R BT.601, as core.image.luminance)."""
    return 0.114 * bgr[:, 0:1] + 0.587 * bgr[:, 1:2] + 0.299 * bgr[:, 2:3]


def prepare(pairs, working_size):
    """Resize each (visible, thermal) pair to the working resolution; float32 [0, 1] arrays."""
    out = []
    for name, visible, thermal in pairs:
        (h, w), _ = working_shape(*visible.shape[:2], working_size, SIZE_MULTIPLE)
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
        for option, path in (("--out", cfg.out / STAGE_OUTPUTS[cfg.stage][0]),
                             ("--run-dir", self.checkpoint_path())):  # before minutes of work, not after
            problem = unwritable_reason(path)
            if problem:
                raise CgrpError(f"cannot write {option} {path.parent}: {problem}")
        shipped = [name for name in STAGE_OUTPUTS[cfg.stage]
                   if (cfg.out / name).resolve() == (shipped_folder("models") / name).resolve()]
        if shipped:
            print(f"[{cfg.stage}] warning: writes the shipped {', '.join(shipped)} in {cfg.out} when it ends (git "
                  f"checkout restores them; --out DIR writes elsewhere)", file=sys.stderr)
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.device = torch.device(resolve_device(cfg.device))  # 'cuda' without a GPU: the CPU, with a warning
        self.images = prepare([pair for root in cfg.data for pair in load_split(root, "train")], cfg.working_size)
        self.modules: dict[str, torch.nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    def t(self, array):
        """H x W[ x C] numpy -> 1 x C x H x W tensor on the training device."""
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).unsqueeze(0).to(self.device)

    def crops(self):
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

    def trained_with(self) -> dict:
        """The options a checkpoint is resumed only with (TRAINED_WITH and the starting weights), as text."""
        def text(value):  # paths absolute: the same run resumed from another folder is the same run
            if isinstance(value, (list, tuple)) and value and isinstance(value[0], Path):
                return repr([str(v.resolve()) for v in value])
            return repr(str(Path(value).resolve()) if isinstance(value, Path) else value)
        used = STAGE_OPTIONS.get(self.cfg.stage, ())
        options = {k: text(getattr(self.cfg, k)) for k in TRAINED_WITH + tuple(k for k in used if k[0] != "-")}
        options.update({f"--{k}": text(v) for k, v in self.cfg.extra.items() if f"--{k}" in used})
        return options

    def starts_from(self, what: str, path) -> None:
        """Say which weights the stage starts from (each stage starts from the shipped ones unless told)."""
        print(f"[{self.cfg.stage}] {what}: {path}", file=sys.stderr)

    def save_checkpoint(self, iteration: int, elapsed: float):
        """runs/<stage>/last.pt, written beside and then moved over the old one: an interruption while
        saving leaves the previous checkpoint, not a truncated file."""
        path = self.checkpoint_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        with replaced_on_success(path) as tmp:
            torch.save({"iteration": iteration, "elapsed": elapsed,
                        "modules": {k: m.state_dict() for k, m in self.modules.items()},
                        "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                        "rng": self.rng.bit_generator.state, "trained_with": self.trained_with()}, tmp)

    def load_checkpoint(self, path: Path) -> tuple:
        """Restore modules, optimizers and the sampling RNG from `path` -> (iteration, elapsed s).
        CgrpError (one line) where the file is unreadable or of another stage or network."""
        try:
            state = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as exc:  # torch raises RuntimeError, pickle errors ... for such files
            raise CgrpError(f"checkpoint {path} cannot be resumed ({type(exc).__name__}: {str(exc)[:120]}): "
                            "pass --restart to start again, or --run-dir for another folder") from None
        before, now = state.get("trained_with") if isinstance(state, dict) else None, self.trained_with()
        if before is not None and before != now:  # resumed, it would train on with its own and say ours
            changed = [f"{k.lstrip('-')} {before.get(k, 'unset')} -> {now.get(k, 'unset')}"
                       for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
            raise CgrpError(f"checkpoint {path} was trained with other options ({'; '.join(changed)}): pass "
                            "--restart to start again with these, or --run-dir for another folder")
        try:
            for k, m in self.modules.items():
                m.load_state_dict(state["modules"][k])
            for k, o in self.optimizers.items():
                o.load_state_dict(state["optimizers"][k])
            self.rng.bit_generator.state = state["rng"]
            return state["iteration"], state["elapsed"]
        except Exception as exc:  # torch raises RuntimeError, pickle errors, KeyError ... for such files
            raise CgrpError(f"checkpoint {path} cannot be resumed ({type(exc).__name__}: {str(exc)[:120]}): "
                            "pass --restart to start again, or --run-dir for another folder") from None

    def run(self):
        cfg, start, elapsed_before = self.cfg, 0, 0.0
        path = self.checkpoint_path()
        if cfg.resume and path.is_file():
            start, elapsed_before = self.load_checkpoint(path)
            print(f"[{cfg.stage}] resuming from {path} at iteration {start}", file=sys.stderr)
            if start >= cfg.iterations:
                print(f"[{cfg.stage}] the checkpoint is already at iteration {start} of --iterations "
                      f"{cfg.iterations}: nothing to train, its weights are exported (--restart starts again)",
                      file=sys.stderr)
        for m in self.modules.values():
            m.train()
        t0 = time.time()
        logs, iteration = {}, start
        bar = tqdm(range(start, cfg.iterations), initial=start, total=cfg.iterations, desc=cfg.stage,
                   dynamic_ncols=True, mininterval=2.0)
        try:
            for iteration in bar:
                logs = self.step(iteration)
                bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()}, refresh=False)
                if (iteration + 1) % cfg.checkpoint_every == 0:
                    self.save_checkpoint(iteration + 1, elapsed_before + time.time() - t0)
                # the budget is this run's: a resumed run trains for `minutes` more
                if cfg.minutes is not None and time.time() - t0 > cfg.minutes * 60:
                    print(f"[{cfg.stage}] time budget of {cfg.minutes} min reached at iteration {iteration + 1}",
                          file=sys.stderr)
                    break
        except KeyboardInterrupt:  # keep what was trained: the iterations completed before the interrupt
            bar.close()
            self.save_checkpoint(iteration, elapsed_before + time.time() - t0)
            print(f"[{cfg.stage}] interrupted: checkpoint {path} at iteration {iteration} (run the same command "
                  "to resume)", file=sys.stderr)
            raise
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

    def cosine_lr(self, optimizer, iteration: int):
        """Cosine decay of the learning rate from cfg.lr to 5 % of it over the run."""
        for group in optimizer.param_groups:
            group["lr"] = self.cfg.lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * iteration / self.cfg.iterations)))

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
    """The registration's dense levels: thermal warped by random `preset` deformations -> flow onto
    the frozen generator's pseudo-thermal, starting from the frozen global stage's affine
    (``--init``: weights from the `global` stage).

    Loss: (1 - local NCC) between registered thermal and pseudo-thermal + flow smoothness, plus
    (unless ``flow_supervision`` is off) multi-level end-point error against the known inverse
    of the synthetic displacement. Pairs are augmented as in the global stage (geometry for all
    three images, photometry for the visible luminance and the thermal).

    Curriculum: learning cross-modal matching from scratch is too slow for a CPU budget, so in a
    share of each batch the fixed image is the aligned *real* thermal (a mono-modal pair, quick to
    learn); that share decays linearly from 100 % to ``MONO_FLOOR`` over the first
    ``MONO_WARMUP`` of training, after which the pseudo-thermal dominates as at inference.
    """

    MONO_WARMUP, MONO_FLOOR = 0.25, 0.2
    FLOW_WEIGHT = 0.5  # synthetic-flow supervision: the truth, where similarity to a blurry pseudo-thermal is not

    def __init__(self, cfg):
        super().__init__(cfg)
        generator_path = cfg.extra.get("generator", default_model_path("generator"))
        self.starts_from("frozen generator", generator_path)
        generator = load_model(generator_path, "generator")
        generator.to(self.device)
        with torch.no_grad():  # the generator is frozen: compute each pseudo-thermal once
            self.pseudo = [generator(self.t(v))[0, 0].cpu().numpy() for _, v, _ in self.images]
        init = self.registration_start()
        self.starts_from("registration starts from", init)
        net = load_model(init, "registration")
        self.config = dict(model_config(init), confidence_threshold=float(net.confidence_stage.threshold))
        self.modules = {"registration": net.to(self.device)}
        # the affine stages (global, local) are frozen: only the pyramid and the dense levels learn
        trainable = [p for name, p in net.named_parameters() if not name.startswith(("global_stage.", "local_stage."))]
        self.optimizers = {"registration": torch.optim.Adam(trainable, lr=cfg.lr)}

    def registration_start(self):
        """The registration weights this stage starts from: --init, else the shipped ones."""
        return self.cfg.extra.get("init", default_model_path("registration"))

    def mono_share(self, iteration: int) -> float:
        progress = iteration / max(1e-9, self.MONO_WARMUP * self.cfg.iterations)
        return max(self.MONO_FLOOR, 1.0 - progress)

    @torch.no_grad()
    def global_flow(self, visible_y: np.ndarray, moving: np.ndarray) -> np.ndarray:
        """The frozen affine stages' estimate (global, then local) on the whole image, before any
        fallback, H x W x 2: the dense levels learn to correct what inference leaves them."""
        padded = tuple(-(-n // SIZE_MULTIPLE) * SIZE_MULTIPLE for n in moving.shape)
        v, m = self.t(pad_to(visible_y, padded)), self.t(pad_to(moving, padded))
        params, _ = self.modules["registration"].affine_estimate(v, m)
        flow = affine_flow(params, m)[0].cpu().numpy().transpose(1, 2, 0)
        return np.ascontiguousarray(flow[:moving.shape[0], :moving.shape[1]])

    def misaligned_batch(self, iteration: int):
        """Batch of (visible luminance, fixed, aligned thermal, misaligned thermal, gt flow, valid,
        global-stage flow) crops; fixed is the pseudo-thermal, or the aligned thermal in the
        curriculum's share (then the aligned thermal also stands in for the visible luminance: a
        fully mono-modal pair). The global stage sees the whole image, as at inference."""
        cols = [[] for _ in range(7)]
        share = self.mono_share(iteration)
        for _ in range(self.cfg.batch):
            i = int(self.rng.integers(len(self.images)))
            _, v, t = self.images[i]
            v, t, p = augment_pair(self.rng, v, t, self.pseudo[i])
            v = luminance(v)
            if self.rng.random() < share:  # mono-modal
                v = p = t
            if self.rng.random() < 0.5:
                v, t, p = v[:, ::-1], t[:, ::-1], p[:, ::-1]
            v, t, p = (np.ascontiguousarray(a) for a in (v, t, p))
            d, _ = random_displacement(*t.shape, draw_preset(self.rng, self.cfg.preset), self.rng)
            moving = warp_numpy(t, d)
            flow = invert_flow(d, iterations=20)
            valid = valid_mask(flow).astype(np.float32)
            initial = self.global_flow(v, moving)
            box = random_crop_box(self.rng, t.shape, self.cfg.crop)
            for k, (col, arr) in enumerate(zip(cols, (v, p, t, moving, flow, valid, initial))):
                col.append(self.t(crop_padded(arr, box, self.cfg.crop, reflect=k < 4)))
        return [torch.cat(c) for c in cols]

    def registration_loss(self, visible_y, pseudo, moving, gt_flow, valid, initial=None):
        net = self.modules["registration"]
        flow, levels, _, _ = net(pseudo, visible_y, moving, initial)
        registered = warp(moving, flow)
        ncc = 1.0 - losses.local_ncc(registered, pseudo, window=9, mask=valid)
        smooth = losses.smoothness(flow)
        loss = self.cfg.similarity_weight * ncc + 0.05 * smooth
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
            loss = loss + self.FLOW_WEIGHT * sup
        return loss, registered, logs

    def step(self, iteration):
        visible_y, pseudo, _, moving, gt_flow, valid, initial = self.misaligned_batch(iteration)
        loss, _, logs = self.registration_loss(visible_y, pseudo, moving, gt_flow, valid, initial)
        opt = self.optimizers["registration"]
        self.cosine_lr(opt, iteration)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.modules["registration"].parameters(), 5.0)
        opt.step()
        return logs

    def export(self, meta):
        meta["flow_supervision"] = self.cfg.flow_supervision
        save_model(self.cfg.out / "registration.pt", "registration", self.modules["registration"], self.config, meta)


def misaligned_crop(rng, visible_y, thermal, preset, crop):
    """Misalign the whole (augmented) thermal by a random displacement drawn from `preset`, then
    crop the pair at one box. -> (visible_y, moving, gt flow H x W x 2, valid H x W float32) crops;
    valid: the flow lands inside the real (unpadded) part of the moving crop."""
    d, _ = random_displacement(*thermal.shape, draw_preset(rng, preset), rng)
    moving = warp_numpy(np.ascontiguousarray(thermal), d)
    flow = invert_flow(d, iterations=20)
    box = random_crop_box(rng, thermal.shape, crop)
    real = (box[0].stop - box[0].start, box[1].stop - box[1].start)
    flow_c = crop_padded(flow, box, crop, reflect=False)
    valid = valid_mask(flow_c, real) & (crop_padded(np.ones(thermal.shape, np.float32), box, crop, reflect=False) > 0)
    return (crop_padded(visible_y, box, crop), crop_padded(moving, box, crop), flow_c, valid.astype(np.float32))


class GlobalStage(Stage):
    """The registration's global stage alone (core/align.py: GlobalMatcher); the dense levels
    keep their pass-through start and are trained next by the `registration` stage.

    Loss: cross-entropy of every visible cell's match distribution against the true thermal cell
    (a Gaussian of 0.5 cells around the position the synthetic displacement sends it to), plus
    0.1 x the end-point error (pixels) of the robust affine fitted to the matches. Every pair is
    augmented (:func:`augment_pair`) and misaligned by the `mix` of presets. At the end the
    confidence threshold is chosen on fresh training samples (:meth:`calibrate`).
    """

    CELL_SIGMA = 0.5

    def __init__(self, cfg):
        super().__init__(cfg)
        self.starts_from("starts from", cfg.extra.get("init") or "new weights (--init to start from others)")
        net = load_model(cfg.extra["init"], "registration") if cfg.extra.get("init") else RegistrationNet()
        self.modules = {"registration": net.to(self.device)}
        self.optimizers = {"global": torch.optim.Adam(net.global_stage.parameters(), lr=cfg.lr)}
        self.config = dict(confidence_threshold=float(net.global_stage.threshold))

    def sample(self, rng, crop):
        _, visible, thermal = self.images[int(rng.integers(len(self.images)))]
        visible, thermal = augment_pair(rng, visible, thermal)
        visible_y = luminance(visible)
        if rng.random() < 0.5:
            visible_y, thermal = visible_y[:, ::-1], thermal[:, ::-1]
        return misaligned_crop(rng, visible_y, thermal, self.cfg.preset, crop)

    def matcher(self):
        """The matcher this stage trains."""
        return self.modules["registration"].global_stage

    def estimate(self, visible_y, thermal):
        """(params N x 6, confidence N) of the registration up to this stage, before any fallback."""
        return self.matcher().estimate(visible_y, thermal)

    def step(self, iteration):
        cols = list(zip(*(self.sample(self.rng, self.cfg.crop) for _ in range(self.cfg.batch))))
        visible_y, moving, flow, valid = (torch.cat([self.t(a) for a in col]) for col in cols)
        stage = self.matcher()
        prob, cells = stage.correlation(visible_y, moving)
        stride = visible_y.shape[-1] // cells.shape[-1]
        gt = F.avg_pool2d(flow, stride)                               # N x 2 x h x w, pixels
        ok = (F.avg_pool2d(valid, stride) > 0.99).float()
        ce = self.match_cross_entropy(prob, cells, gt / stride, ok)
        position, weight = stage.matches(prob, cells)
        params, _ = stage.fit(cells, position, weight)
        epe = losses.masked_epe(affine_flow(params, cells[:, :1]) * stride, gt, ok)
        loss = ce + 0.1 * epe
        optimizer = next(iter(self.optimizers.values()))
        self.cosine_lr(optimizer, iteration)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(stage.parameters(), 5.0)
        optimizer.step()
        return dict(ce=ce.item(), epe=epe.item(), scale=stage.log_scale.exp().item())

    def match_cross_entropy(self, prob, cells, target, ok):
        """Mean over the cells where `ok` of the cross-entropy of each visible cell's distribution over
        all thermal cells (`prob` N x P x Q) against a CELL_SIGMA Gaussian at its true displacement
        (`target` N x 2 x h x w, cells)."""
        grid = pixel_grid(cells[:, :1]).flatten(2)                    # N x 2 x Q, cell units
        true_cell = (pixel_grid(cells[:, :1]) + target).flatten(2)    # N x 2 x P
        d2 = (grid[:, :, None, :] - true_cell[:, :, :, None]).pow(2).sum(dim=1)
        soft = torch.softmax(-d2 / (2 * self.CELL_SIGMA ** 2), dim=2)
        ce = -(soft * torch.log(prob + 1e-9)).sum(dim=2)
        mask = ok.flatten(1)
        return (ce * mask).sum() / mask.sum().clamp_min(1.0)

    @torch.no_grad()
    def calibrate(self) -> dict:
        """Pick the confidence threshold that minimises the mean end-point error on `threshold_samples`
        fresh training samples (the whole `mix` of misalignments, whatever the stage trained on) when every pair
        below it keeps the identity; then raise it, if needed, above 95 % of pairs whose thermal
        belongs to another image (nothing to match)."""
        stage, samples = self.matcher(), self.cfg.threshold_samples
        rng = np.random.default_rng(self.cfg.seed + 1)
        conf, fitted, identity, mismatched = [], [], [], []
        for k in range(samples):
            _, visible, thermal = self.images[int(rng.integers(len(self.images)))]
            visible, thermal = augment_pair(rng, visible, thermal)
            crop = tuple(SIZE_MULTIPLE * (n // SIZE_MULTIPLE) for n in thermal.shape)
            visible_y, moving, flow, valid = misaligned_crop(rng, luminance(visible), thermal,
                                                             "mix", crop)
            params, confidence = self.estimate(self.t(visible_y), self.t(moving))
            predicted = affine_flow(params, self.t(moving))[0].numpy().transpose(1, 2, 0)
            inside = valid > 0
            conf.append(float(confidence))
            fitted.append(float(np.linalg.norm(predicted - flow, axis=2)[inside].mean()))
            identity.append(float(np.linalg.norm(flow, axis=2)[inside].mean()))
            _, other, _ = self.images[int(rng.integers(len(self.images)))]
            other_y = resize(luminance(other), moving.shape)
            mismatched.append(float(self.estimate(self.t(other_y), self.t(moving))[1]))
        conf, fitted, identity = map(np.array, (conf, fitted, identity))
        candidates = np.concatenate(([0.0], np.sort(conf)))
        mean_epe = [np.where(conf >= t, fitted, identity).mean() for t in candidates]
        best = float(candidates[int(np.argmin(mean_epe))])
        mismatched_p95 = float(np.percentile(mismatched, 95))
        stage.threshold.fill_(max(best, mismatched_p95))
        threshold = float(stage.threshold)  # as stored (float32): the report and the config say the same
        report = dict(threshold=threshold, best_for_epe=best, mismatched_p95=mismatched_p95,
                      epe_fitted=float(fitted.mean()), epe_identity=float(identity.mean()),
                      epe_with_fallback=float(np.where(conf >= threshold, fitted, identity).mean()),
                      fallback_share=float((conf < threshold).mean()), samples=samples)
        print(f"[{self.cfg.stage}] calibration: {report}", file=sys.stderr)
        return report

    def export(self, meta):
        meta["calibration"] = self.calibrate()
        self.config["confidence_threshold"] = meta["calibration"]["threshold"]
        save_model(self.cfg.out / "registration.pt", "registration", self.modules["registration"], self.config, meta)


class LocalStage(GlobalStage):
    """The registration's local matcher alone (core/align.py: LocalMatcher), on top of the frozen
    global stage of ``--init`` (which it leaves unchanged).

    It sees what the global stage leaves: pairs misaligned by the `residual` mix (none, mild, and
    up to +-2.5 % translation, 1.5 deg, 2 % scale, 2 % elastic). Loss: cross-entropy of every
    visible cell's distribution over the window against the true displacement (a Gaussian of 0.5
    cells), for cells whose truth is inside the window, plus 0.1 x the end-point error (pixels) of
    the affine fitted to the matches.
    """

    def __init__(self, cfg):
        Stage.__init__(self, cfg)
        init = cfg.extra.get("init", default_model_path("registration"))
        self.starts_from("starts from (its global stage kept)", init)
        net = load_model(init, "registration", new_modules=("local_stage",))
        self.modules = {"registration": net.to(self.device)}
        self.optimizers = {"local": torch.optim.Adam(net.local_stage.parameters(), lr=cfg.lr)}
        self.config = dict(model_config(init), local_dim=net.local_stage.dim)

    def matcher(self):
        return self.modules["registration"].local_stage

    def estimate(self, visible_y, thermal):
        return self.modules["registration"].affine_estimate(visible_y, thermal)

    def match_cross_entropy(self, prob, cells, target, ok):
        """As the global stage's, over the window's displacements (`prob` N x K x h x w), for the cells
        whose true displacement lies inside the window."""
        radius = self.matcher().RADIUS
        offsets = window_offsets(radius, prob)                                       # K x 2, cells
        d2 = (offsets[None, :, :, None, None] - target[:, None]).pow(2).sum(dim=2)   # N x K x h x w
        soft = torch.softmax(-d2 / (2 * self.CELL_SIGMA ** 2), dim=1)
        ce = -(soft * torch.log(prob + 1e-9)).sum(dim=1)
        inside = (target.abs().amax(dim=1, keepdim=True) <= radius - 0.5).float()
        mask = (ok * inside)[:, 0]
        return (ce * mask).sum() / mask.sum().clamp_min(1.0)


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
        super().__init__(cfg)  # the registration, from --registration (its config too: see registration_start)
        fusion_path = cfg.extra.get("fusion", default_model_path("fusion"))
        self.starts_from("fusion starts from", fusion_path)
        fus = load_model(fusion_path, "fusion")
        self.modules = {"registration": self.modules["registration"], "fusion": fus.to(self.device)}
        self.optimizers = {"joint": torch.optim.Adam([p for m in self.modules.values() for p in m.parameters()],
                                                     lr=cfg.lr)}

    def registration_start(self):
        return self.cfg.extra.get("registration", default_model_path("registration"))

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
        save_model(self.cfg.out / "registration.pt", "registration", self.modules["registration"], self.config, meta)
        save_model(self.cfg.out / "fusion.pt", "fusion", self.modules["fusion"], dict(channels=16), meta)


# what each stage writes into cfg.out
STAGE_OUTPUTS = {"generator": ("generator.pt",), "global": ("registration.pt",), "local": ("registration.pt",),
                 "registration": ("registration.pt",), "fusion": ("fusion.pt",),
                 "joint": ("registration.pt", "fusion.pt")}
# TrainConfig fields a checkpoint must have been trained with to be resumed (iterations, minutes, device and
# threads may change between runs: a resumed run trains longer, or on another machine)
TRAINED_WITH = ("data", "batch", "crop", "lr", "working_size", "seed")
# and those only some stages read (an option a stage ignores must not refuse its resume)
STAGE_OPTIONS = {"global": ("preset", "threshold_samples", "--init"),
                 "local": ("preset", "threshold_samples", "--init"),
                 "registration": ("preset", "flow_supervision", "similarity_weight", "--init", "--generator"),
                 "joint": ("preset", "flow_supervision", "similarity_weight", "--generator", "--registration",
                           "--fusion")}

STAGES = {"generator": GeneratorStage, "global": GlobalStage, "local": LocalStage, "registration": RegistrationStage,
          "fusion": FusionStage, "joint": JointStage}


def train(cfg: TrainConfig) -> dict:
    """Run one stage; returns the metadata written into the model file."""
    if cfg.extra.get("threads"):
        torch.set_num_threads(int(cfg.extra["threads"]))
    return STAGES[cfg.stage](cfg).run()

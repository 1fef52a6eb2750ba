"""cgrp train: train one stage of the CGRP networks (resumable)."""
from __future__ import annotations

from pathlib import Path

from .common import non_negative, positive

HELP = ("train one stage: generator -> global -> local -> registration -> fusion [-> joint] "
        "(resumable checkpoints in runs/)")


def add_arguments(t):
    t.add_argument("stage", choices=["generator", "global", "local", "registration", "fusion", "joint"],
                   help="global: the registration's global matcher; local: its local matcher (refines the "
                        "global affine); registration: its dense levels")
    t.add_argument("--data", type=Path, action="append", default=None,
                   help="dataset folder with visible/, thermal/ and train.txt; repeat for several "
                        "(default: roadscene and m3svd in the folder that holds $CGRP_DATA, else in "
                        "../shared/datasets beside the repository)")
    t.add_argument("--out", type=Path, default=Path("models"), help="where the final weights go (default: models)")
    t.add_argument("--run-dir", type=Path, default=Path("runs"), help="resumable checkpoints (default: runs)")
    t.add_argument("--iterations", type=positive(int), help="total iterations (default: per stage)")
    t.add_argument("--batch", type=positive(int))
    t.add_argument("--lr", type=positive(float))
    t.add_argument("--preset",
                   help="deformation preset for global/local/registration/joint, or a mix: mix (default: none to "
                        "beyond severe), mix-small (more aligned and mild pairs), residual (local's default: what "
                        "the global stage leaves)")
    t.add_argument("--seed", type=non_negative(int), default=0)
    t.add_argument("--minutes", type=positive(float), help="wall-clock budget of this run (a resumed one trains this long more): save and stop after it")
    t.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t.add_argument("--threads", type=positive(int), help="CPU threads for torch (default: all cores)")
    t.add_argument("--no-flow-supervision", action="store_true",
                   help="registration: train on image similarity + smoothness only (ablation)")
    t.add_argument("--similarity-weight", type=non_negative(float), default=1.0,
                   help="registration: weight of the image-similarity term (0: synthetic-flow supervision only)")
    t.add_argument("--threshold-samples", type=positive(int), default=160,
                   help="global/local: fresh training pairs the confidence threshold is chosen on (default: 160)")
    t.add_argument("--init", type=Path, help="global/local/registration: start from these registration weights")
    t.add_argument("--generator", type=Path, help="frozen generator weights for registration/joint")
    t.add_argument("--registration", type=Path, help="registration weights to start joint from")
    t.add_argument("--fusion", type=Path, help="fusion weights to start joint from")


def run(args) -> int:
    import signal

    def stop(signum, frame):  # docker stop, systemd, timeout: saved and resumable, as Ctrl-C is
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return _train(args)
    finally:  # (main() may be called in a process that goes on)
        signal.signal(signal.SIGTERM, previous)


def _train(args) -> int:
    from ..training.stages import TrainConfig, train

    extra = {k: v for k, v in (("generator", args.generator), ("registration", args.registration),
                               ("fusion", args.fusion), ("threads", args.threads), ("init", args.init)) if v}
    cfg = TrainConfig(stage=args.stage, data=args.data, out=args.out, run_dir=args.run_dir,
                      iterations=args.iterations or 0, batch=args.batch or 0, lr=args.lr or 0.0,
                      preset=args.preset or "", seed=args.seed, minutes=args.minutes, resume=not args.restart,
                      device=args.device, flow_supervision=not args.no_flow_supervision,
                      similarity_weight=args.similarity_weight, threshold_samples=args.threshold_samples, extra=extra)
    meta = train(cfg)
    print(f"[{args.stage}] {meta['iterations']} iterations in {meta['wall_time_s'] / 60:.1f} min on "
          f"{meta['device']}; weights in {cfg.out}")
    return 0

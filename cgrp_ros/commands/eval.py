"""cgrp eval: misaligned-fusion benchmark of CGRP against classical baselines on aligned pairs.

Several data sets (repeat --data, each with its own optional --list) and presets (repeat --preset or
separate them by commas) run in one command: per-run outputs go to OUT/DATASET/PRESET/, one
cross-domain table (a row per data set x preset) to OUT/report.md, summary.json, summary.csv, pairs.csv.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..core.data import default_dataset_root, unwritable_reason
from ..core.deform import PRESETS
from ..core.errors import CgrpError
from .common import add_pipeline_arguments, non_negative, pipeline_from_args, positive, size_arg

HELP = "misalign aligned pairs on purpose, register + fuse with CGRP and baselines, write metrics and a report"


class _DataAction(argparse.Action):
    """--data DIR: a new data set; a --list given before the first --data belongs to it."""

    def __call__(self, parser, namespace, value, option_string=None):
        datasets = list(getattr(namespace, "datasets", None) or [])
        datasets.append([value, getattr(namespace, "pending_list", None)])
        namespace.pending_list = None
        namespace.datasets = datasets


class _ListAction(argparse.Action):
    """--list FILE: the split of the --data right before it."""

    def __call__(self, parser, namespace, value, option_string=None):
        datasets = getattr(namespace, "datasets", None) or []
        if not datasets:
            if getattr(namespace, "pending_list", None) is not None:
                parser.error("--list given twice before the first --data")
            namespace.pending_list = value
        elif datasets[-1][1] is None:
            datasets[-1][1] = value
        else:
            parser.error(f"--list {value}: --data {datasets[-1][0]} already has --list {datasets[-1][1]}")


class _PresetAction(argparse.Action):
    """--preset NAME[,NAME...], repeatable; the default is replaced, not extended."""

    def __call__(self, parser, namespace, value, option_string=None):
        chosen = list(getattr(namespace, "_presets_given", None) or [])
        for name in (v.strip() for v in value.split(",")):
            if name not in PRESETS:
                parser.error(f"--preset: unknown preset '{name}', expected some of {', '.join(PRESETS)}")
            if name and name not in chosen:
                chosen.append(name)
        namespace._presets_given = chosen
        namespace.presets = chosen


def add_arguments(p):
    from ..evaluation.protocol import METHODS

    p.add_argument("--data", type=Path, action=_DataAction, dest="datasets", default=None, metavar="DIR",
                   help="folder with visible/ and thermal/ aligned pairs, or whose subfolders each hold them "
                   "(one data set made of all of them); repeat for several data sets, each named after its "
                   "folder (default: $CGRP_DATA, else ../shared/datasets/roadscene beside the repository)")
    p.add_argument("--list", type=Path, action=_ListAction, dest="pending_list", default=None, metavar="FILE",
                   help="evaluate only the names listed in FILE, e.g. DATA/val.txt; applies to the --data "
                   "before it (default: every pair)")
    p.add_argument("--preset", action=_PresetAction, dest="presets", default=["moderate"], metavar="NAME[,NAME]",
                   help=f"synthetic misalignment, repeatable or comma-separated: {', '.join(PRESETS)} "
                   "(default: moderate)")
    p.add_argument("--no-fusion-metrics", action="store_true",
                   help="registration metrics only: no fusion of the baselines, no fused-image metrics, no "
                        "figures (the fused-image metrics take seconds per large pair; the cross-domain table "
                        "needs only the flow)")
    p.add_argument("--methods", default=",".join(METHODS), metavar="M[,M]",
                   help=f"methods to run, comma-separated, of {', '.join(METHODS)}; cgrp and none always run "
                   "(default: all; ECC is slow on large images: --methods cgrp,none)")
    p.add_argument("--seed", type=non_negative(int), default=0, help="misalignment seed; each image's warp depends on (seed, name) (default: 0)")
    p.add_argument("--limit", type=positive(int), default=None, metavar="N",
                   help="only the first N pairs (by name) of each data set")
    p.add_argument("--figures", type=int, default=3, metavar="N",
                   help="example panels for the first N pairs of each run")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: report.md + summary.* (all runs), DATASET/PRESET/ per run")
    p.add_argument("--write-benchmarks", type=Path, default=None, metavar="FILE",
                   help="also put the tables into FILE (e.g. docs/benchmarks.md) between the lines "
                   "'<!-- cgrp eval cross-domain: begin -->' and '<!-- cgrp eval cross-domain: end -->' (several "
                   "data sets), '<!-- cgrp eval NAME: begin -->' and '... end -->' (one data set NAME: its table and "
                   "each preset's report, every method), or the --rig sections")
    p.add_argument("--threads", type=non_negative(int), default=0, help="torch CPU threads (default 0: torch's own choice)")
    g = p.add_argument_group("fixed rig (--rig)")
    g.add_argument("--rig", action="store_true",
                   help="treat each data set as video sequences of one rig: ONE misalignment per sequence and "
                        "preset, frames played in order; compares per-frame registration with the amortised "
                        "stream (EPE, shimmer = mean frame-to-frame flow change, time to converge); writes "
                        "rig.md / rig.json")
    g.add_argument("--fps", type=positive(float), default=10.0, help="--rig: frame rate the sequences are played at (default 10)")
    g.add_argument("--registration-rate", type=positive(float), default=0.5, metavar="HZ",
                   help="--rig: full registrations per second of the amortised mode once converged (default 0.5, "
                        "as cgrp_fusion)")
    g.add_argument("--calibrate", action="store_true",
                   help="--rig: instead, turn each data set's pairs into ONE synthetic rig whose thermal sees the "
                        "central 1/FOV of the view moved by a fixed severe-sized transform, the visible camera the "
                        "whole view at PIXELS x the pixels; run cgrp calibrate's estimator on it and report the "
                        "corner error and the EPE of fusing with the calibration")
    g.add_argument("--view", default="1.6,2", metavar="FOV,PIXELS",
                   help="--calibrate: visible field of view / thermal's, and visible pixels / thermal's per axis "
                        "(default 1.6,2)")
    g.add_argument("--rig-size", type=size_arg, default=(320, 480), metavar="HxW",
                   help="--calibrate: the synthetic rig's thermal size (default 320x480)")
    g.add_argument("--edge-fit", action="store_true",
                   help="--calibrate: also fit the rig's mapping without the networks (a shift and a scale of the "
                        "thermal about its centre, on top of the true mapping, that line up both cameras' edges "
                        "best over all pairs) and report its corner error against the truth and the calibration: "
                        "where the data set's own alignment lies (a few minutes per data set)")
    g.add_argument("--mi-fit", action="store_true",
                   help="--calibrate: the same search as --edge-fit, judged by the mutual information of the two "
                        "cameras' grey levels instead of their edges: a second opinion that shares nothing with the "
                        "edge check or the networks")
    g.add_argument("--one-modality", action="store_true",
                   help="--calibrate: also calibrate the same rig with the thermal image on both sides, so the data "
                        "set's own alignment plays no part and the truth is exact, and report that corner error: the "
                        "estimator's own error (a minute or two per data set)")
    add_pipeline_arguments(p)


def requested_fits(args) -> list:
    """The judges of evaluation.rig.FIT_JUDGES asked for with --edge-fit / --mi-fit, in that order."""
    from ..evaluation.rig import FIT_JUDGES

    return [judge for judge in FIT_JUDGES if getattr(args, f"{judge}_fit", False)]


def dataset_specs(args) -> list:
    """[(data folder, list file or None)] in command-line order; the default data set when none is given."""
    if args.datasets:
        return [(Path(d), Path(lst) if lst else None) for d, lst in args.datasets]
    return [(default_dataset_root(), args.pending_list)]


def command_line(args) -> str:
    """The invocation, rebuilt from the parsed options (also right when called from Python)."""
    from ..evaluation.protocol import METHODS, select_methods

    parts = ["cgrp eval"]
    for data, list_file in dataset_specs(args):
        parts.append(f"--data {shlex.quote(str(data))}")
        if list_file:
            parts.append(f"--list {shlex.quote(str(list_file))}")
    parts += [f"--preset {','.join(args.presets)}"]
    methods = select_methods(args.methods)
    if methods != METHODS:
        parts.append(f"--methods {','.join(methods)}")
    if getattr(args, "no_fusion_metrics", False):
        parts.append("--no-fusion-metrics")
    parts.append(f"--seed {args.seed}")
    if args.limit:
        parts.append(f"--limit {args.limit}")
    parts += [f"--out {shlex.quote(str(args.out))}", f"--backend {args.backend}", f"--device {args.device}",
              "--working-size {}x{}".format(*args.working_size), f"--fusion-scale {args.fusion_scale:g}"]
    if args.threads:
        parts.append(f"--threads {args.threads}")
    if args.fp16:
        parts.append("--fp16")
    if args.models:
        parts.append(f"--models {shlex.quote(str(args.models))}")
    if getattr(args, "onnx_dir", None):
        parts.append(f"--onnx-dir {shlex.quote(str(args.onnx_dir))}")
    if args.homography:
        parts.append(f"--homography {shlex.quote(str(args.homography))}")
    if getattr(args, "calibration", None):
        parts.append(f"--calibration {shlex.quote(str(args.calibration))}")
    if getattr(args, "rig", False) and getattr(args, "calibrate", False):
        parts.append("--rig --calibrate --view {} --rig-size {}x{}".format(args.view, *args.rig_size))
        parts += [f"--{judge}-fit" for judge in requested_fits(args)]
        if getattr(args, "one_modality", False):
            parts.append("--one-modality")
    elif getattr(args, "rig", False):
        parts.append(f"--rig --fps {args.fps:g} --registration-rate {args.registration_rate:g}")
    if args.write_benchmarks:
        parts.append(f"--write-benchmarks {shlex.quote(str(args.write_benchmarks))}")
    return " ".join(parts)


def benchmarks_section(args, names) -> tuple:
    """(begin, end) markers of the section --write-benchmarks replaces for this run on data sets `names`:
    the rig calibration's, the rig's, or the data sets' (report.section_markers)."""
    from ..evaluation import report

    if args.rig and args.calibrate:
        return report.RIG_CALIBRATION_BEGIN, report.RIG_CALIBRATION_END
    if args.rig:
        return report.RIG_BEGIN, report.RIG_END
    return report.section_markers(names)


def write_rig_report(args, name: str, documents: dict, body: str, markers) -> None:
    """OUT/NAME.json + OUT/NAME.md (the command line first), printed, and with --write-benchmarks put
    between `markers` (begin, end) in that file."""
    import json

    from ..evaluation import report

    flags = "--rig --calibrate" if name == "rig_calibration" else "--rig"
    text = (f"*Written by `cgrp eval {flags}` (command below): run the command again rather than editing this "
            f"section.*\n\nCommand: `{command_line(args)}`\n\n{body}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(documents, indent=1))
    (args.out / f"{name}.md").write_text(text + "\n")
    print(text)
    if args.write_benchmarks:
        done = report.replace_marked_block(args.write_benchmarks, text, *markers)
        print(f"cgrp eval: {name} table written into {args.write_benchmarks} ({done}: {markers[0]})")


def run_rig_calibration(args, datasets) -> int:
    """--rig --calibrate: cgrp calibrate's estimator on synthetic rigs of another resolution and view."""
    from ..evaluation.rig import calibration_markdown, evaluate_calibration

    try:
        fov, pixels = (float(v) for v in args.view.split(","))
    except ValueError:
        raise CgrpError(f"--view: expected FOV,PIXELS (e.g. 1.6,2), got '{args.view}'") from None
    if fov <= 0 or pixels <= 0:
        raise CgrpError("--view: both numbers must be > 0")
    models = str(args.models / "registration.pt") if args.models else None
    results = {d.name: evaluate_calibration(d.pairs, args.rig_size, fov, pixels, args.device, models,
                                            args.working_size, fits=requested_fits(args),
                                            one_modality=getattr(args, "one_modality", False))
               for d in datasets}
    write_rig_report(args, "rig_calibration", results, calibration_markdown(results),
                     benchmarks_section(args, results))
    return 0


def run_rig(args, datasets, pipeline) -> int:
    """--rig: per-frame vs amortised registration on fixed-rig sequences, one table per data set, and
    OUT/rig_epe_DATASET_PRESET.png (EPE over time)."""
    import cv2

    from ..evaluation.rig import epe_over_time_figure, evaluate_rig, rig_markdown

    args.out.mkdir(parents=True, exist_ok=True)
    sections, documents = [], {}
    for dataset in datasets:
        document = evaluate_rig(pipeline, dataset.pairs, args.presets, args.seed, args.fps, args.registration_rate)
        documents[dataset.name] = document
        for preset in args.presets:  # pictures: EPE over time, per-frame vs amortised
            cv2.imwrite(str(args.out / f"rig_epe_{dataset.name}_{preset}.png"), epe_over_time_figure(document, preset))
        sections.append(f"### {dataset.name}: fixed rig, {args.fps:g} fps, amortised registration at "
                        f"{args.registration_rate:g} Hz\n\n{rig_markdown(document)}")
    write_rig_report(args, "rig", documents, "\n\n".join(sections), benchmarks_section(args, documents))
    return 0


JUDGE_YOUR_RIG = ("cgrp eval misaligns aligned pairs on purpose and feeds the thermal at the visible image's size, "
                  "where this calibration cannot apply. Judge your own rig's calibration by its edge check instead: "
                  "cgrp fuse --calibration (registration.csv) or cgrp calibrate's")


def refuse_a_rigs_calibration(args, datasets) -> None:
    """cgrp eval feeds each pair's thermal at its visible image's size (the pairs are aligned): a calibration
    of two cameras of different aspect ratios cannot apply there, nor one made for another aspect ratio
    than a pair's (the Pipeline refuses such a pair): refused before the models load, not at that pair."""
    import cv2

    from ..core.calibrate import load_rig
    from ..core.data import read_image
    from ..core.image import same_aspect

    if not getattr(args, "calibration", None):
        return
    _, sizes = load_rig(args.calibration)
    if sizes is None:
        return
    (vh, vw), (th, tw) = sizes
    if not same_aspect((vh, vw), (th, tw)):
        raise CgrpError(f"--calibration {args.calibration} maps a {tw}x{th} thermal onto a {vw}x{vh} visible image; "
                        + JUDGE_YOUR_RIG)
    other = []
    for dataset in datasets:
        for name, visible_path, _ in dataset.pairs:
            h, w = read_image(visible_path, cv2.IMREAD_GRAYSCALE).shape[:2]
            if not same_aspect((h, w), (vh, vw)):
                other.append(f"{dataset.name}/{name} {w}x{h}")
    if other:
        raise CgrpError(f"--calibration {args.calibration} was made for a {vw}x{vh} visible image; {len(other)} pair(s) "
                        f"have another aspect ratio ({'; '.join(other[:3])}{'; ...' if len(other) > 3 else ''}). "
                        + JUDGE_YOUR_RIG)


def run(args) -> int:
    from ..evaluation import report
    from ..evaluation.evaluate import evaluate_datasets, load_datasets
    from ..evaluation.protocol import select_methods

    methods = select_methods(args.methods)  # bad names, data problems: raise before the models load
    calibration_only = [f"--{judge}-fit" for judge in requested_fits(args)] + \
        (["--one-modality"] if getattr(args, "one_modality", False) else [])
    if calibration_only and not (args.rig and args.calibrate):
        raise CgrpError(f"{' '.join(calibration_only)}: only with --rig --calibrate")
    datasets = load_datasets(dataset_specs(args), args.limit)
    unwritable = args.write_benchmarks and ("it is a folder" if Path(args.write_benchmarks).is_dir()
                                            else unwritable_reason(args.write_benchmarks))
    if unwritable:  # before the evaluation, not after it
        raise CgrpError(f"--write-benchmarks: cannot write {args.write_benchmarks}: {unwritable}")
    if args.write_benchmarks:
        problem = report.marked_block_problem(args.write_benchmarks,
                                              *benchmarks_section(args, [d.name for d in datasets]))
        if problem:
            raise CgrpError(f"--write-benchmarks: {problem}")
    earlier = [name for name in ("report.md", "rig.md", "rig_calibration.md") if (args.out / name).is_file()]
    if earlier:  # its pictures and data-set folders would sit beside this run's, or stay alone after a Ctrl-C
        print(f"cgrp eval: warning: {args.out} holds an earlier run's {', '.join(earlier)}: this run's files replace "
              "theirs, the others stay (use a new --out for a clean report)", file=sys.stderr)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.rig and args.calibrate:
        return run_rig_calibration(args, datasets)
    refuse_a_rigs_calibration(args, datasets)
    pipeline = pipeline_from_args(args)
    if args.rig:
        return run_rig(args, datasets, pipeline)
    info = dict(command=command_line(args), working_size="{}x{}".format(*args.working_size), limit=args.limit)
    result = evaluate_datasets(pipeline, datasets, args.presets, args.out, args.seed, args.figures, methods, info,
                               fusion=not args.no_fusion_metrics)
    for evaluation in result.evaluations:
        for target, holds, detail in evaluation.targets:
            print(f"cgrp eval: {evaluation.dataset} {evaluation.preset}: {'holds' if holds else 'MISSED'}: "
                  f"{target} ({detail})")
    for row in result.rows:
        print(f"cgrp eval: {row['dataset']} {row['preset']}: {row['pairs']} pair(s), EPE cgrp "
              f"{row['epe_cgrp']:.3g} px, none {row['epe_none']:.3g} px, confidence {row['confidence_mean']:.3g}, "
              f"{row['fallbacks']} fallback(s)")
        for t in row["targets"]:
            print(f"cgrp eval: {row['dataset']} {row['preset']}: target: {'holds' if t['holds'] else 'MISSED'}: "
                  f"{t['target']} ({t['detail']})")
    c = result.confidence
    mean = lambda n, epe: f"mean EPE {epe:.3g} px" if n else "no pair"  # noqa: E731
    verdict = {True: "holds", False: "MISSED", None: "not testable"}[c["holds"]]
    print(f"cgrp eval: confidence < {c['threshold']:.3g}: {c['pairs_below']} pair(s), "
          f"{mean(c['pairs_below'], c['epe_below'])}; >= {c['threshold']:.3g}: {c['pairs_above']} pair(s), "
          f"{mean(c['pairs_above'], c['epe_above'])}: {verdict}")
    if args.write_benchmarks:
        begin, _ = markers = benchmarks_section(args, [d.name for d in datasets])
        done = report.replace_marked_block(args.write_benchmarks, report.benchmarks_block(result), *markers)
        print(f"cgrp eval: tables written into {args.write_benchmarks} (section {begin}, {done})")
    print(f"cgrp eval: {sum(len(d.pairs) for d in datasets)} pair(s) x {len(args.presets)} preset(s), "
          f"report in {args.out / 'report.md'}")
    return 0

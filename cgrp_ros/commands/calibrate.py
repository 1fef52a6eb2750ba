"""cgrp calibrate: the rig's thermal -> visible homography from many pairs (cgrp_ros.core.calibrate).

Writes OUT (rig.yaml: the homography, both image sizes, pairs used, each skipped pair with its
reason, the median residual, the edge check, the date, the command), OUT with .png (visible/thermal
checkerboard before and after, on the most confident pair) and rig_edges.jpg beside it (both cameras'
edges on that pair). The edge check scores
how well the thermal's edges meet the visible image's on every pair used, with the plain resize and
with the calibration (no ground truth needed); a calibration that scores clearly worse warns. With
too little evidence nothing is written and the exit code is 2; with fewer than FEW_PAIRS pairs used
it warns.
"""
from __future__ import annotations

import collections
import shlex
import sys
from pathlib import Path

import cv2
from tqdm import tqdm

from ..core.calibrate import FEW_SCENES
from ..core.camera import undistort
from ..core.data import find_pairs, read_image
from ..core.errors import CgrpError
from ..ros.sync import DEFAULT_SLOP, describe_offset
from .common import (add_camera_file_arguments, add_thermal_arguments, cameras_from_args, non_negative, positive,
                     size_arg, unit_interval)

HELP = "estimate the rig's thermal->visible homography from many pairs (two folders or a bag), write rig.yaml"
SHOWN_SKIPPED = 10  # skipped pairs named on the terminal; rig.yaml lists them all
# below this many pairs used, say that the calibration rests on few pairs: a pair's match errors (about a
# visible pixel, more on a featureless pair) are shared by all its matches, so only many pairs average them out
FEW_PAIRS = 20


def add_arguments(p):
    from ..core.calibrate import DEFAULT_SCALES

    p.add_argument("--visible", type=Path, help="folder of visible images (or one file)")
    p.add_argument("--thermal", type=Path, help="folder of thermal images with the same names")
    p.add_argument("--out", type=Path, required=True, help="calibration file to write, e.g. rig.yaml "
                   "(pictures next to it: rig.png, a checkerboard, and rig_edges.jpg, both cameras' edges; "
                   "each before and after the calibration)")
    g = p.add_argument_group("rosbag2 (instead of --visible/--thermal)")
    g.add_argument("--bag", type=Path, help="rosbag2 (bag folder, .db3 or .mcap): each visible message with the "
                   "thermal message nearest in stamp")
    g.add_argument("--slop", type=non_negative(float), default=DEFAULT_SLOP, metavar="S",
                   help="with --bag: skip a visible message whose nearest thermal is stamped more than S seconds "
                   "away (on a moving robot the two saw different scenes; default: cgrp_fusion's, %(default)g)")
    g.add_argument("--visible-topic", help="visible topic in the bag (sensor_msgs/Image or CompressedImage)")
    g.add_argument("--thermal-topic", help="thermal topic in the bag (sensor_msgs/Image or CompressedImage)")
    g.add_argument("--no-camera-info", dest="camera_info", action="store_false",
                   help="with --bag: ignore the bag's camera_info topics (by default, where both cameras have one "
                        "beside their image topic, each image is undistorted with it first, as cgrp_fusion does "
                        "before it applies a calibration)")
    g.add_argument("--every", type=positive(int), default=1, metavar="N",
                   help="with --bag: every N-th pair (consecutive video frames add little; default 1)")
    p.add_argument("--list", type=Path, default=None, metavar="FILE", help="only the names listed in FILE")
    p.add_argument("--limit", type=positive(int), default=None, metavar="N", help="only the first N pairs (by name)")
    add_camera_file_arguments(p)
    p.add_argument("--scales", default=",".join(f"{s:.4g}" for s in DEFAULT_SCALES), metavar="S[,S]",
                   help="thermal placement scales to try (thermal field of view / visible field of view; "
                   "default: %(default)s)")
    p.add_argument("--min-confidence", type=unit_interval, default=None,
                   help="skip pairs whose match confidence (the registration network's global search, 0..1; "
                   "not the per-pair registration confidence of cgrp fuse) is below this (default: the "
                   "larger of 0.15 and the global search's own threshold, 0.28 with the shipped weights)")
    p.add_argument("--min-pairs", type=positive(int), default=1, help="fail unless at least this many pairs are used (default 1)")
    p.add_argument("--refinements", type=non_negative(int), default=2,
                   help="passes with the fitted homography as the placement (default 2)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: CUDA when available, else CPU (default: auto)")
    p.add_argument("--working-size", type=size_arg, default=(256, 320), metavar="HxW",
                   help="resolution the matcher runs at, at least 256x320 in area (default: 256x320, the size its "
                        "match-confidence minimum was chosen at: at larger sizes fewer pairs reach it, and on "
                        "RoadScene/M3SVD the calibration was no better)")
    p.add_argument("--models", type=Path, help="folder with registration.pt (default: shipped)")
    add_thermal_arguments(p.add_argument_group("thermal (as you give them to cgrp fuse)"))


def _loader(path, camera=None, name: str = ""):
    """A pair's image, read when needed; undistorted with `camera` (core.camera.Intrinsics, of the `name`
    camera) if given."""
    if camera is None:
        return lambda: read_image(path, cv2.IMREAD_UNCHANGED)
    return lambda: undistort(read_image(path, cv2.IMREAD_UNCHANGED), camera, name)


def stamp_names(stamps_ns, indices) -> list:
    """A bag's pairs named by their visible stamps (ns -> s with 6 decimals), as cgrp fuse --bag's
    registration.csv names them; a stamp that repeats gets its message's index (`indices`) too, since the
    names key rig.yaml's skipped pairs and must differ."""
    stamps = [f"{stamp * 1e-9:.6f}" for stamp in stamps_ns]
    repeated = {stamp for stamp, n in collections.Counter(stamps).items() if n > 1}
    return [f"{stamp}#{index}" if stamp in repeated else stamp for stamp, index in zip(stamps, indices)]


def bag_pairs(bag, visible_topic: str, thermal_topic: str, every: int = 1, slop: float = DEFAULT_SLOP,
              camera_info: bool = True) -> tuple:
    """([(name, load visible, load thermal)], how many messages could not be read) of a bag's pairs
    (cgrp_player's BagSource, no rclpy): each
    visible message with the nearest thermal, if stamped within `slop` seconds; with `camera_info`, each
    image undistorted with its camera's camera_info from the bag where both cameras have one (the node
    undistorts before it applies a calibration, so the calibration must see the same images)."""
    from ..ros.sources import BagSource

    source = BagSource(bag, visible_topic, thermal_topic, read_cameras=True)  # bag/topic problems: exit 2
    cameras = source.cameras
    for note in cameras.notes:
        print(f"cgrp calibrate: {note}", file=sys.stderr)
    print(f"cgrp calibrate: {cameras.describe() if camera_info else 'camera_info ignored (--no-camera-info)'}")
    use = cameras.both and camera_info
    if source.skipped:
        print(f"cgrp calibrate: {source.skipped} unreadable message(s) in the bag skipped", file=sys.stderr)
    offsets = [(thermal - visible) * 1e-9 for visible, thermal in map(source.stamps, range(len(source)))]
    within = [index for index, offset in enumerate(offsets) if abs(offset) <= slop]
    if not within:
        why = describe_offset(min(offsets, key=abs), slop, "--slop")
        raise CgrpError(f"bag '{bag}': no visible message has a thermal message within --slop {slop:g} s: {why}")
    if len(within) < len(source):
        print(f"cgrp calibrate: {len(source) - len(within)} visible message(s) without a thermal within --slop "
              f"{slop:g} s skipped", file=sys.stderr)

    def load(index: int, stream: int):
        images = source.arrays(index)
        if not use:
            return images[stream]
        intrinsics, _, problem = cameras.for_pair(images[0].shape, images[1].shape)
        if problem:  # the same sizes for the whole bag, as a rule: once is enough
            raise CgrpError(f"{problem}: calibrate with --no-camera-info, or fix the camera_info")
        return undistort(images[stream], intrinsics[stream])

    chosen = within[::every]
    names = stamp_names([source.stamps(index)[0] for index in chosen], chosen)
    pairs = [(name, lambda i=index: load(i, 0), lambda i=index: load(i, 1)) for name, index in zip(names, chosen)]
    # as recorded: the source makes the thermal single channel, which would hide a colour "thermal"
    warn_if_swapped(pairs[0][0], lambda: source.recorded_arrays(within[0]))
    return pairs, source.skipped


def run(args) -> int:
    from ..core.calibrate import RigCalibrator, calibration_path_problem, save_calibration
    from ..evaluation.rig import calibration_edge_check

    try:
        scales = tuple(float(s) for s in args.scales.split(",") if s.strip())
    except ValueError:
        print(f"cgrp calibrate: error: --scales: expected numbers separated by commas, got '{args.scales}'",
              file=sys.stderr)
        return 2
    if not scales or min(scales) <= 0:
        print("cgrp calibrate: error: --scales: expected positive numbers", file=sys.stderr)
        return 2
    unwritable = calibration_path_problem(args.out)
    if not unwritable and args.out in picture_paths(args.out):  # the picture would overwrite the calibration
        unwritable = f"the checkerboard picture is written to {args.out}: give a .yaml name, e.g. " \
                     f"{args.out.with_suffix('.yaml')}"
    if unwritable:  # before minutes of work, not after
        print(f"cgrp calibrate: error: cannot write {args.out}: {unwritable}", file=sys.stderr)
        return 2
    pairs, problems = input_pairs(args)
    if pairs is None:
        return 2
    calibrator = RigCalibrator(str(args.models / "registration.pt") if args.models else None, args.device,
                               args.working_size, scales, args.min_confidence, args.min_pairs,
                               refinements=args.refinements, thermal_percentiles=tuple(args.thermal_percentiles),
                               black_hot=args.black_hot)
    progress = lambda it, total, desc: tqdm(it, total=total, desc=desc, unit="pair", leave=False)  # noqa: E731
    calibration = calibrator.calibrate(pairs, progress, command_line(args))
    # (not enough evidence raises CalibrationError: one line, exit 2, no file)
    calibration.edge_check = calibration_edge_check(pairs, calibration, progress)
    save_calibration(calibration, args.out)
    written = write_pictures(args.out, pairs, calibration, calibrator.best_pair or pairs[0][0])
    print(f"cgrp calibrate: {calibration.pairs_used} pair(s) used, {calibration.pairs_skipped} skipped; "
          f"{calibration.matches} inlier matches, median residual {calibration.median_residual_px:.2f} px "
          "(visible; the matches' spread about the fit, not its accuracy); "
          f"placement scale {calibration.scale:.3g}; wrote {args.out}, {written}")
    print(f"cgrp calibrate: {edge_check_line(calibration.edge_check)}")
    if edges_got_worse(calibration.edge_check):
        print("cgrp calibrate: warning: the thermal's edges meet the visible image's worse with the calibration than "
              f"with the plain resize: check {written} before using it (a rig whose cameras are already aligned "
              "needs no calibration)", file=sys.stderr)
    if calibration.pairs_used < FEW_PAIRS:
        print(f"cgrp calibrate: warning: calibrated from only {calibration.pairs_used} pair(s); a pair's match errors "
              f"are shared by all its matches, so a few dozen pairs of different scenes give a steadier "
              f"calibration", file=sys.stderr)
    if calibration.scenes is not None and calibration.scenes < FEW_SCENES:
        print(f"cgrp calibrate: warning: the pairs used show {calibration.scenes} scene(s) (pairs whose visible "
              "images hardly differ count as one): each scene biases the matches its own way (on M3SVD's rigs "
              "one scene alone was 1-3 thermal px off, four together 0.8); add pairs of other places and views",
              file=sys.stderr)
    skipped = list(calibration.skipped.items())
    for name, why in skipped[:SHOWN_SKIPPED]:
        print(f"  skipped {name}: {why}")
    if len(skipped) > SHOWN_SKIPPED:
        print(f"  ... {len(skipped) - SHOWN_SKIPPED} more skipped pair(s), each with its reason in {args.out}")
    unreadable = len(calibrator.unreadable)
    if problems or unreadable:  # written, but the input had faults: as cgrp fuse, a non-zero exit
        print(f"cgrp calibrate: {problems + unreadable} problem(s) in the input (reported above): exit code 1",
              file=sys.stderr)
        return 1
    return 0


CAMERA_MIX_UPS = ("swapped", "same_picture", "colour_thermal")  # content_warnings' kinds that say the folders are wrong


def warn_if_swapped(name: str, load) -> None:
    """cgrp fuse's warnings (core.image.content_warnings) that the cameras look swapped, one camera is given
    for both, or the "thermal" is in colour, for a pair: the calibration would map the wrong images (it
    was written without a word). `load()` -> (visible, thermal). An unreadable pair is left to the
    calibration to report."""
    from ..core.image import content_warnings

    try:
        warnings = content_warnings(*load())
    except Exception:  # noqa: BLE001 - reported, with its name, where the calibration reads it
        return
    for kind, text in warnings:
        if kind in CAMERA_MIX_UPS:
            print(f"cgrp calibrate: warning: {name}: {text}", file=sys.stderr)


def input_pairs(args) -> tuple:
    """([(name, load visible, load thermal)] from --bag or --visible/--thermal (--list, --limit applied), the
    number of problems already reported: files without a partner and --list names in neither folder, or a
    bag's unreadable messages); pairs None after printing why there are none to use."""
    from ..core.data import read_split

    if args.bag is not None:
        if args.visible or args.thermal or not args.visible_topic or not args.thermal_topic:
            print("cgrp calibrate: error: --bag needs --visible-topic and --thermal-topic, and replaces "
                  "--visible/--thermal", file=sys.stderr)
            return None, 0
        if args.visible_camera_info or args.thermal_camera_info:
            print("cgrp calibrate: error: --visible/--thermal-camera-info are for folders: a bag's camera_info "
                  "topics are used", file=sys.stderr)
            return None, 0
        if args.list:
            print("cgrp calibrate: error: --list names pairs of folders; for a bag, --every and --limit pick "
                  "the pairs", file=sys.stderr)
            return None, 0
        pairs, problems = bag_pairs(args.bag, args.visible_topic, args.thermal_topic, args.every, args.slop,
                                    args.camera_info)  # (unreadable messages: said, skipped, exit 1 as fuse --bag)
    else:
        if args.visible is None or args.thermal is None:
            print("cgrp calibrate: error: give --visible and --thermal (or --bag with its topics)", file=sys.stderr)
            return None, 0
        names = read_split(args.list) if args.list else None
        listing = find_pairs(args.visible, args.thermal, names)
        problems = len(listing.problems())
        for problem in listing.report():
            print(f"cgrp calibrate: {problem}", file=sys.stderr)
        for warning in listing.warnings():
            print(f"cgrp calibrate: warning: {warning}", file=sys.stderr)
        cameras = cameras_from_args(args)
        pairs = [(name, _loader(v, cameras and cameras[0], "visible"), _loader(t, cameras and cameras[1], "thermal"))
                 for name, v, t in listing.pairs]
        if pairs:
            warn_if_swapped(pairs[0][0], lambda: (pairs[0][1](), pairs[0][2]()))
    pairs = pairs[:args.limit] if args.limit else pairs
    if not pairs:
        print("cgrp calibrate: error: no visible/thermal pairs found", file=sys.stderr)
        return None, problems
    return pairs, problems


def picture_paths(out: Path) -> tuple:
    """(checkerboard, edges) pictures written next to the calibration file `out`."""
    return out.with_suffix(".png"), out.with_name(out.stem + "_edges.jpg")


def write_pictures(out: Path, pairs, calibration, best: str) -> str:
    """rig.png (checkerboard) and rig_edges.jpg (both cameras' edges) next to `out`, drawn on pair
    `best`; -> the paths written, for the summary line."""
    from ..evaluation.report import checkerboard_picture
    from ..evaluation.rig import calibration_edges_picture

    _, load_visible, load_thermal = next(p for p in pairs if p[0] == best)
    visible, thermal = load_visible(), load_thermal()
    picture, edges_path = picture_paths(out)
    cv2.imwrite(str(picture), checkerboard_picture(visible, thermal, calibration.homography, name=f"pair {best}"))
    edges = calibration_edges_picture(visible, thermal, calibration, f"pair {best}")
    if edges is None:
        return str(picture)
    cv2.imwrite(str(edges_path), edges, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return f"{picture} and {edges_path}"


def edge_check_line(check: dict) -> str:
    """One line on evaluation.rig.calibration_edge_check's result."""
    return (f"edge check (no ground truth needed): the thermal's edges meet the visible image's "
            f"{check['resize']:.3f} with the plain resize, {check['calibration']:.3f} with the calibration "
            f"(edge agreement, -1..1); the calibration better on {check['calibration_better_on']}, worse on "
            f"{check['calibration_worse_on']} of {check['pairs_scored']} pair(s)")


def edges_got_worse(check: dict) -> bool:
    """The calibration lines the edges up worse than the plain resize, on average and on most pairs."""
    from ..evaluation.metrics import EDGE_MARGIN_OF_DIFFERENCE

    return (check["calibration"] < check["resize"] - EDGE_MARGIN_OF_DIFFERENCE
            and check["calibration_worse_on"] > check["pairs_scored"] / 2)


def command_line(args) -> str:
    """The invocation, rebuilt from the parsed options (also right when called from Python)."""
    q = lambda v: shlex.quote(str(v))  # noqa: E731
    if getattr(args, "bag", None) is not None:
        parts = ["cgrp calibrate", f"--bag {q(args.bag)}", f"--visible-topic {q(args.visible_topic)}",
                 f"--thermal-topic {q(args.thermal_topic)}", f"--every {args.every}", f"--slop {args.slop:g}",
                 f"--out {q(args.out)}"]
        if not getattr(args, "camera_info", True):
            parts.append("--no-camera-info")
    else:
        parts = ["cgrp calibrate", f"--visible {q(args.visible)}", f"--thermal {q(args.thermal)}",
                 f"--out {q(args.out)}"]
    if args.list:
        parts.append(f"--list {q(args.list)}")
    if args.limit:
        parts.append(f"--limit {args.limit}")
    for option in ("visible_camera_info", "thermal_camera_info"):  # the images it saw were undistorted
        if getattr(args, option, None):
            parts.append(f"--{option.replace('_', '-')} {q(getattr(args, option))}")
    parts += [f"--scales {args.scales}", f"--refinements {args.refinements}", f"--min-pairs {args.min_pairs}",
              "--working-size {}x{}".format(*args.working_size), f"--device {args.device}"]
    if args.min_confidence is not None:
        parts.append(f"--min-confidence {args.min_confidence}")
    if args.models:
        parts.append(f"--models {q(args.models)}")
    return " ".join(parts)

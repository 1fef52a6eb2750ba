"""cgrp fuse: offline fusion of one pair or two folders of same-named pairs, or of a rosbag2.

With --bag the two image topics of a recording (sqlite3 or MCAP; sensor_msgs/Image or
CompressedImage) are paired and fused like cgrp_fusion does it, into a new MCAP bag
(cgrp_ros/ros/bag.py: no ROS installation needed); its registration.csv names each pair by the
visible image's stamp (s).

Besides the images, OUT/registration.csv has a row per fused pair: the registration's confidence,
whether it fell back to the prior (identity, or --homography / --calibration), the mean flow
magnitude, and how well the thermal's edges meet the visible image's before and after registration
(metrics.edge_agreement: no ground truth needed, so it works on a user's own recordings);
OUT/alignment/NAME.jpg shows those edges, for a person to judge (folders only); --video puts every
pair's pictures side by side into one video (folders and bags). A pair registered with low confidence
gets a warning line; it is still written and is no failure.
"""
from __future__ import annotations

import csv
import itertools
import logging
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..core.camera import undistort
from ..core.confidence import low_confidence_text
from ..core.data import find_pairs, read_image, read_split, unwritable_reason
from ..core.errors import CgrpError
from ..evaluation.alignment import ReceivedAndRegistered, received_and_registered
from ..evaluation.metrics import EDGE_MARGIN_OF_DIFFERENCE, edge_comparison
from ..evaluation.report import alignment_panel, flow_picture, stretched_uint8
from ..evaluation.video import FusionVideo, video_frame
from .common import (add_camera_file_arguments, add_pipeline_arguments, cameras_from_args, non_negative,
                     pipeline_from_args, positive)

HELP = "fuse a visible/thermal pair, two folders of same-named pairs (extensions may differ), or a bag"
log = logging.getLogger("cgrp_ros")
REGISTRATION_COLUMNS = ("name", "registration_confidence", "registration_fallback", "mean_flow_px",
                        "edge_agreement_input", "edge_agreement_registered")


def add_arguments(p):
    p.add_argument("--visible", type=Path, help="visible image file or folder")
    p.add_argument("--thermal", type=Path, help="thermal image file or folder")
    p.add_argument("--out", type=Path, required=True, help="output folder (with --bag: the new MCAP bag)")
    p.add_argument("--list", type=Path, metavar="FILE", help="folders: only the names listed in FILE (one per line, "
                   "like a data set's val.txt)")
    p.add_argument("--limit", type=positive(int), metavar="N", help="only the first N pairs (folders: by name; a bag: "
                   "in time, the new bag ending there), for a first look at a long recording")
    add_camera_file_arguments(p)
    g = p.add_argument_group("rosbag2 (instead of --visible/--thermal)")
    g.add_argument("--bag", type=Path, help="rosbag2 to fuse (bag folder, .db3 or .mcap); writes an MCAP bag "
                   "at --out with both inputs and /cgrp_fusion/{fused,registered_thermal,deformation,pseudo_thermal}")
    g.add_argument("--visible-topic", help="visible topic in the bag (sensor_msgs/Image or CompressedImage)")
    g.add_argument("--thermal-topic", help="thermal topic in the bag (sensor_msgs/Image or CompressedImage)")
    g.add_argument("--slop", type=non_negative(float), default=None, help="largest stamp difference of a pair, s "
                   "(default: cgrp_fusion's, 0.05)")
    g.add_argument("--no-camera-info", dest="camera_info", action="store_false",
                   help="ignore the bag's camera_info topics (by default, where both cameras have one beside their "
                        "image topic, each image is undistorted with it first, as cgrp_fusion does)")
    g.add_argument("--queue-size", type=positive(int), default=None, help="messages per stream kept for pairing "
                   "(default: cgrp_fusion's, 10)")
    g = p.add_argument_group("sequences (folders in name order, or a bag)")
    g.add_argument("--registration-rate", type=non_negative(float), default=0.0, metavar="HZ",
                   help="treat the input as one rig's stream: register at most HZ times per second of stream time "
                        "(or on a scene change) and fuse every pair with the running rig estimate, as cgrp_fusion "
                        "does (default 0: every pair registered alone, for unrelated pairs)")
    g.add_argument("--fps", type=positive(float), default=10.0,
                   help="frame rate of folder sequences, for --registration-rate and --video (default 10; bags use "
                        "their stamps)")
    g.add_argument("--video", type=Path, metavar="FILE",
                   help="also write a video (.mp4 or .avi), a frame per pair: visible | thermal as received | "
                        "registered thermal | fused | edges after registration")
    add_pipeline_arguments(p)


def write_result(out: Path, name: str, result) -> None:
    """DIR/fused/NAME.png (colour when the visible is colour), registered/, pseudo/, flow/ (.npy), flow_vis/."""
    for sub in ("fused", "registered", "pseudo", "flow", "flow_vis"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    fused = result.fused_image
    registered = result.registered_thermal
    if registered.dtype == np.float32:  # PNG holds no floats: keep the data as .npy next to an 8-bit view
        np.save(out / "registered" / f"{name}.npy", registered)
        registered = stretched_uint8(registered)
    cv2.imwrite(str(out / "fused" / f"{name}.png"), fused)
    cv2.imwrite(str(out / "registered" / f"{name}.png"), registered)
    cv2.imwrite(str(out / "pseudo" / f"{name}.png"), result.pseudo_thermal)
    np.save(out / "flow" / f"{name}.npy", result.flow)
    cv2.imwrite(str(out / "flow_vis" / f"{name}.png"), flow_picture(result.flow))


def write_alignment(out: Path, name: str, pair: ReceivedAndRegistered, edges, result) -> None:
    """DIR/alignment/NAME.jpg: the edges of both cameras as the pair came in and as registered (JPEG: a
    picture to look at, a fifth of the PNG's size)."""
    (out / "alignment").mkdir(parents=True, exist_ok=True)
    how = "fell back to the prior" if result.registration_fallback else "registered"
    views = [(pair.received, f"input, no registration, edges {edges[0]:.3f}"),
             (pair.registered, f"{how}, confidence {float(result.registration_confidence):.2f}, edges {edges[1]:.3f}")]
    cv2.imwrite(str(out / "alignment" / f"{name}.jpg"), alignment_panel(pair.visible_y, views, name, pair.seen),
                [cv2.IMWRITE_JPEG_QUALITY, 90])


def registration_row(name: str, confidence: float, fallback: bool, flow: np.ndarray, edges) -> dict:
    """One row of OUT/registration.csv (see REGISTRATION_COLUMNS); edges: (input, registered)."""
    mean_flow = float(np.hypot(flow[..., 0], flow[..., 1]).mean())
    return dict(name=name, registration_confidence=f"{float(confidence):.4f}",
                registration_fallback=int(bool(fallback)), mean_flow_px=f"{mean_flow:.3f}",
                edge_agreement_input=f"{edges[0]:.4f}", edge_agreement_registered=f"{edges[1]:.4f}")


def edge_summary(rows: list) -> str:
    """One line on the edge columns of registration.csv: means, and on how many pairs the registration
    moved the score by more than metrics.EDGE_MARGIN_OF_DIFFERENCE either way."""
    c = edge_comparison([float(r["edge_agreement_input"]) for r in rows],
                        [float(r["edge_agreement_registered"]) for r in rows])
    if not c["scored"]:
        return "edge agreement: no pair could be scored (a constant image has no edges, or too little overlap)"
    unscored = len(rows) - c["scored"]
    unscored = f"; {unscored} pair(s) without edges to score (nan: a constant image, too little overlap)" \
        if unscored else ""
    return (f"edge agreement with the visible image (registration.csv), input -> registered: mean "
            f"{c['before']:.3f} -> {c['after']:.3f}; better on {c['better']}, worse on {c['worse']} of "
            f"{c['scored']} pair(s) (by more than {EDGE_MARGIN_OF_DIFFERENCE}){unscored}")


def low_confidence_warning(name: str, confidence: float, fallback: bool, threshold: float) -> str | None:
    """The warning line for a pair registered with low confidence, or None."""
    text = low_confidence_text(confidence, fallback, threshold, "identity, or --calibration / --homography")
    return None if text is None else f"cgrp fuse: warning: {name}: {text}"


def write_registration_csv(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=REGISTRATION_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def no_pair_reason(args, summary, slop: float) -> str:
    """Why a bag gave no pair: its messages were bad, or its stamps never met (by how much)."""
    from ..ros.sync import describe_offset

    why = describe_offset(summary.stamp_offset, slop, "--slop")
    if summary.skipped and why is None:  # the bad messages (listed above) are the reason
        return "no pair fused"
    return (f"no pair fused: the stamps of '{args.visible_topic}' and '{args.thermal_topic}' never came within "
            f"--slop {slop:g} s" + (f": {why}" if why else ""))


def run_bag(args) -> int:
    """--bag: the two topics of a recording -> a new MCAP bag with the inputs and the node's outputs."""
    from ..core.stream import STALLED_FRAME_S, StreamPipeline
    from ..ros.bag import BagTopics, fuse_bag
    from ..ros.sync import DEFAULT_QUEUE_SIZE, DEFAULT_SLOP

    if args.visible or args.thermal:
        raise CgrpError("--bag replaces --visible/--thermal: give one or the other")
    if args.list:
        raise CgrpError("--list selects pairs of folders by name; a bag's pairs have none (--limit N: the first N)")
    if args.visible_camera_info or args.thermal_camera_info:
        raise CgrpError("--visible/--thermal-camera-info are for folders: a bag's camera_info topics are used")
    if not args.visible_topic or not args.thermal_topic:
        raise CgrpError("--bag needs --visible-topic and --thermal-topic")
    slop = DEFAULT_SLOP if args.slop is None else args.slop
    queue_size = DEFAULT_QUEUE_SIZE if args.queue_size is None else args.queue_size
    with BagTopics(args.bag, args.visible_topic, args.thermal_topic):  # bag and topic problems before the models load
        pass
    if args.out.exists():
        raise CgrpError(f"output bag '{args.out}' exists already: remove it or pick another --out")
    video = FusionVideo(args.video) if args.video else None  # at the bag's own rate
    pipeline = pipeline_from_args(args)
    # paced by the visible stamps; where they stand still, frames count 0.1 s each (not the machine's speed:
    # the output stays deterministic)
    frames = itertools.count()
    stream = StreamPipeline(pipeline, args.registration_rate, clock=lambda: next(frames) * STALLED_FRAME_S)
    records = PairRecords(pipeline, video)

    def record(visible_msg, thermal_msg, outputs):  # registration.csv: one row per pair, named by its stamp
        visible, thermal = outputs.inputs  # the images the flow was computed on (no second conversion)
        fused = outputs.images["fused"][0] if "fused" in outputs.images else None
        records.add(f"{outputs.stamp:.6f}", visible, thermal, outputs.images["deformation"][0], fused,
                    outputs.confidence, outputs.fallback, outputs.stamp)

    try:
        summary = fuse_bag(stream, args.bag, args.visible_topic, args.thermal_topic, args.out,
                           slop=slop, queue_size=queue_size,
                           progress=lambda total: tqdm(total=total, desc="fuse bag", unit="msg"),
                           warn=lambda text: tqdm.write(f"cgrp fuse: {text}", file=sys.stderr), on_pair=record,
                           use_camera_info=args.camera_info, limit=args.limit)
    finally:  # also on Ctrl-C: the rows of the pairs already fused (the bag itself is closed by fuse_bag)
        records.close(args.out)
    print(f"cgrp fuse: {summary.cameras}")
    records.print_summary()
    limited = f" (stopped at --limit {args.limit})" if summary.stopped else ""
    print(f"cgrp fuse: {summary.line()}{limited}, {records.low_confidence_line()}; written to {args.out}")
    if not summary.pairs:
        print(f"cgrp fuse: error: {no_pair_reason(args, summary, slop)}", file=sys.stderr)
        return 1
    return 1 if summary.skipped else 0


class PairRecords:
    """What `cgrp fuse` keeps of the fused pairs besides their images (folders and bags alike): the rows of
    registration.csv, the `--video` (a FusionVideo or None) and the low-confidence warnings and their count."""

    def __init__(self, pipeline, video=None):
        self.pipeline, self.video = pipeline, video
        self.rows, self.low_confidence = [], 0

    def add(self, name: str, visible, thermal, flow, fused, confidence: float, fallback: bool, stamp: float) -> tuple:
        """One fused pair: its edge check, row, video frame (`fused` None: no frame) and warning, if any.
        -> (ReceivedAndRegistered, its edge scores)."""
        pair = received_and_registered(self.pipeline, visible, thermal, flow)
        edges = pair.edges()
        self.rows.append(registration_row(name, confidence, fallback, flow, edges))
        if self.video and fused is not None:
            self.video.add(video_frame(name, pair, visible, fused, confidence, fallback), stamp)
        warning = low_confidence_warning(name, confidence, fallback, self.pipeline.confidence_threshold)
        if warning:
            self.low_confidence += 1
            tqdm.write(warning, file=sys.stderr)
        return pair, edges

    def low_confidence_line(self) -> str:
        return (f"{self.low_confidence} with low registration confidence (below "
                f"{self.pipeline.confidence_threshold:.3f}, or fell back to the prior: registration.csv)")

    def close(self, out: Path) -> None:
        """OUT/registration.csv, if any pair was fused, and the video closed (also on Ctrl-C: an unclosed .mp4
        has no index and does not play)."""
        if self.rows:
            write_registration_csv(out / "registration.csv", self.rows)
        if self.video:
            self.video.close()

    def print_summary(self) -> None:
        """The lines on the edge check and the video (which it closes)."""
        if self.rows:
            print(f"cgrp fuse: {edge_summary(self.rows)}")
        if self.video:
            print(f"cgrp fuse: {self.video.summary()}")


# of the cameras, not of a pair: said for the first pair only
CAMERA_WARNINGS = ("swapped", "stretched", "colour_thermal", "same_picture")
MAX_PROBLEM_LINES = 20  # the rest are counted: a folder of misnamed files must not flood the terminal


def run(args) -> int:
    if args.bag is not None:
        return run_bag(args)
    if args.visible is None or args.thermal is None:
        raise CgrpError("give --visible and --thermal (or --bag with --visible-topic and --thermal-topic)")
    listing = find_pairs(args.visible, args.thermal, read_split(args.list) if args.list else None)
    listing.pairs = listing.pairs[:args.limit]  # a slice past the end (or None) keeps them all
    failures = listing.problems()
    for warning in listing.warnings():
        print(f"cgrp fuse: warning: {warning}", file=sys.stderr)
    if not listing.pairs:
        for f in listing.report():
            print(f"cgrp fuse: {f}", file=sys.stderr)
        print("cgrp fuse: error: no visible/thermal pairs found", file=sys.stderr)
        return 2
    unwritable = unwritable_reason(args.out / "registration.csv")
    if unwritable:
        raise CgrpError(f"cannot write to --out {args.out}: {unwritable}")
    cameras = cameras_from_args(args)  # an unreadable camera file: before the models load
    video = FusionVideo(args.video, args.fps) if args.video else None  # a bad name fails before the models load
    pipeline = pipeline_from_args(args)  # model problems raise here, before any file is written
    from ..core.stream import StreamPipeline  # here: torch loads with the models, not before the checks above

    stream = StreamPipeline(pipeline, args.registration_rate)
    records, said_once = PairRecords(pipeline, video), set()
    reported = report_problems(failures, 0)  # missing partners, names of --list in neither folder
    if (args.out / "registration.csv").is_file():
        print(f"cgrp fuse: warning: {args.out} holds an earlier run's results: this run's pairs are written "
              "over, the others stay (registration.csv lists this run's)", file=sys.stderr)
    try:
        for index, (name, visible_path, thermal_path) in enumerate(
                tqdm(listing.pairs, desc="fuse", unit="pair", disable=len(listing.pairs) < 2)):
            warnings = []
            try:
                visible = read_image(visible_path)
                thermal = read_image(thermal_path)
                warnings = pipeline.input_warnings(visible, thermal)  # as received (the node's order too)
                if cameras is not None:  # another size than its calibration: InputError, this pair only
                    visible = undistort(visible, cameras[0], "visible")
                    thermal = undistort(thermal, cameras[1], "thermal")
                result = stream(visible, thermal, stamp=index / args.fps)
                say_warnings(name, warnings, said_once)  # once fused: a refused pair is told by its error
                write_result(args.out, name, result)
                pair, edges = records.add(name, visible, thermal, result.flow, result.fused_image,
                                          result.registration_confidence, result.registration_fallback,
                                          index / args.fps)
                write_alignment(args.out, name, pair, edges, result)
            except CgrpError as exc:
                # ... and by swapped cameras, which may explain it (said once, as when fused)
                say_warnings(name, [w for w in warnings if w[0] == "swapped"], said_once)
                failures.append(str(exc) if str(visible_path) in str(exc) or str(thermal_path) in str(exc)
                                else f"{name}: {exc}")
            reported = report_problems(failures, reported)  # as they come, not after an hour of pairs
    finally:  # also on Ctrl-C: the rows of the pairs already written
        records.close(args.out)
    records.print_summary()
    report_problems(failures, reported)
    if len(failures) > MAX_PROBLEM_LINES:
        print(f"cgrp fuse: ... and {len(failures) - MAX_PROBLEM_LINES} more problem(s)", file=sys.stderr)
    print(f"cgrp fuse: {len(records.rows)} pair(s) written to {args.out}, {len(failures)} problem(s), "
          f"{records.low_confidence_line()}")
    return 1 if failures else 0


def say_warnings(name: str, warnings, said_once: set) -> None:
    """Print a pair's input warnings; those of the cameras (CAMERA_WARNINGS) once for the folders."""
    for kind, text in warnings:
        if kind not in said_once:
            tqdm.write(f"cgrp fuse: warning: {name}: {text}", file=sys.stderr)
        if kind in CAMERA_WARNINGS:
            said_once.add(kind)


def report_problems(failures: list, reported: int) -> int:
    """Print the problems not yet printed (the first MAX_PROBLEM_LINES of them); -> how many are printed."""
    for f in failures[reported:MAX_PROBLEM_LINES]:
        tqdm.write(f"cgrp fuse: {f}", file=sys.stderr)
    return max(reported, min(len(failures), MAX_PROBLEM_LINES))

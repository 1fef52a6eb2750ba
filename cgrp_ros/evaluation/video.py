"""`cgrp fuse --video`: a recording's pairs side by side in one video, to look through rather than
open image by image.

    video = FusionVideo(Path("out/fused.mp4"), fps=10.0)   # fps None: from the first frames' stamps
    video.add(video_frame(name, pair, visible, fused, confidence, fallback), stamp)
    print(video.summary())                                # closes the file
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..core.errors import CgrpError
from .alignment import ReceivedAndRegistered
from .report import fusion_frame


class FusionVideo:
    """Frames (BGR uint8, e.g. `video_frame`'s) into `path` (.mp4: mp4v, .avi: Motion JPEG) at `fps`, or
    with fps None (a bag) at the median rate of the first PROBE frames' stamps (s). A frame of another
    size than the first (a folder of mixed sizes) is resized to the first's."""

    CODECS = {".mp4": "mp4v", ".avi": "MJPG"}
    PROBE = 10

    def __init__(self, path: Path, fps: float | None = None):
        if path.suffix.lower() not in self.CODECS:
            raise CgrpError(f"--video: '{path}' must end in {' or '.join(self.CODECS)}")
        self.path, self.fps = path, fps
        self.writer, self.size, self.frames = None, None, 0  # size: (width, height) of the file's frames
        self.pending = []  # (frame, stamp) until the rate is known

    def add(self, frame: np.ndarray, stamp: float) -> None:
        self.pending.append((frame, stamp))
        if self.fps is not None or len(self.pending) >= self.PROBE:
            self._flush()

    def close(self) -> int:
        """Write what is pending, close the file; -> the number of frames written (0: no file)."""
        if self.pending:
            self._flush()
        if self.writer is not None:
            self.writer.release()
        return self.frames

    def summary(self) -> str:
        """Closes the video; one line on what was written."""
        frames = self.close()
        return (f"video of {frames} pair(s) at {self.fps:.4g} fps: {self.path}" if frames else
                f"no video written ({self.path}): no pair was fused")

    def _flush(self) -> None:
        if self.writer is None:
            if self.fps is None:
                intervals = np.diff([stamp for _, stamp in self.pending])
                intervals = intervals[intervals > 0]
                self.fps = float(np.clip(1.0 / np.median(intervals), 0.1, 120.0)) if intervals.size else 10.0
            height, width = self.pending[0][0].shape[:2]
            height, width = height - height % 2, width - width % 2  # codecs subsample colour in 2x2 blocks
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*self.CODECS[self.path.suffix.lower()]),
                                          self.fps, (width, height))
            if not self.writer.isOpened():
                raise CgrpError(f"--video: OpenCV cannot write '{self.path}'")
            self.size = (width, height)
        for frame, _ in self.pending:
            if (frame.shape[1], frame.shape[0]) != self.size:
                frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
            self.writer.write(frame)
            self.frames += 1
        self.pending = []


def video_frame(name: str, pair: ReceivedAndRegistered, visible: np.ndarray, fused: np.ndarray,
                confidence: float, fallback: bool) -> np.ndarray:
    """The --video frame of one pair (`pair`: alignment.received_and_registered of it), the registration's
    confidence and fallback on the registered thermal's tile (what a person scans a recording for)."""
    status = "fell back to the prior" if fallback else "registered"
    return fusion_frame(visible, pair.visible_y, pair.received, pair.registered, pair.seen, fused, name,
                        f"{status}, confidence {float(confidence):.2f}")

"""Where cgrp_player's pairs come from, without rclpy: two folders of same-named images, or a bag.

A source has `len(source)`, `source.arrays(index)` -> (visible, thermal) arrays and
`source.stamps(index)` -> (visible ns, thermal ns) or None, and `source.sends_thermal(index)`.
`cgrp calibrate --bag` reads bags through the same BagSource.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..core.data import find_pairs, read_image, sample_dir
from ..core.deform import PRESETS, misalign, rng_for
from ..core.errors import CgrpError
from ..core.image import check_image, luminance


class PairSource:
    """What the player needs of a source of pairs: `len(source)`, `source.arrays(index)` ->
    (visible, thermal) arrays, `source.stamps(index)` -> (visible ns, thermal ns) or None (stamp now), and
    `source.frame_ids(index)` -> (visible, thermal) frame_id as recorded, or None, and
    `source.sends_thermal(index)`: False where the pair's thermal frame goes out with another pair.

    The arrays are shrunk to `max_width`, the thermal made single channel and misaligned by `deform`.
    """

    def __init__(self, deform: str = "none", seed: int = 0, max_width: int = 0, fixed_rig: bool = False):
        if deform not in PRESETS:
            raise CgrpError(f"deform: unknown preset '{deform}', expected one of {', '.join(PRESETS)}")
        self.deform, self.seed, self.max_width, self.fixed_rig = deform, seed, max_width, fixed_rig

    def _shrink(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        if not self.max_width or width <= self.max_width:
            return image
        size = (self.max_width, max(1, round(height * self.max_width / width)))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)

    def _finish(self, visible: np.ndarray, thermal: np.ndarray, name: str):
        visible, thermal = self._shrink(visible), self._shrink(thermal)
        if thermal.ndim == 3:  # a thermal camera is single channel
            thermal = luminance(thermal)
        if self.deform != "none":
            # a rigid rig: one misalignment for every frame (of one size); else one per image
            thermal = misalign(thermal, self.deform, rng_for(self.seed, "rig" if self.fixed_rig else name)).misaligned
        return visible, thermal

    def stamps(self, index: int):
        return None

    def frame_ids(self, index: int):
        """(visible, thermal) header frame_id as recorded, or None (folders: none recorded)."""
        return None

    def sends_thermal(self, index: int) -> bool:
        """Whether pair `index`'s thermal image goes out with its visible one (a thermal frame shared by
        several pairs goes out with one of them, as its camera sent it once)."""
        return True


class FolderSource(PairSource):
    """Same-named visible/thermal image pairs from two folders, as (visible, thermal) arrays."""

    def __init__(self, visible_dir, thermal_dir, deform: str = "none", seed: int = 0, max_width: int = 0,
                 fixed_rig: bool = False):
        super().__init__(deform, seed, max_width, fixed_rig)
        root = sample_dir()
        visible_dir, thermal_dir = visible_dir or root / "visible", thermal_dir or root / "thermal"
        self.pairs = find_pairs(visible_dir, thermal_dir).pairs  # [(name, visible path, thermal path)]
        if not self.pairs:
            raise CgrpError(f"no visible/thermal pairs in '{visible_dir}' and '{thermal_dir}'")

    def __len__(self) -> int:
        return len(self.pairs)

    def arrays(self, index: int):
        """(visible, thermal) of pair `index`: the thermal single channel, misaligned by `deform`."""
        name, visible_path, thermal_path = self.pairs[index]
        # a file the player cannot send as an image (e.g. a 1-D .npy) is an unreadable pair, not the player's end
        return self._finish(check_image(read_image(visible_path), str(visible_path)),
                            check_image(read_image(thermal_path), str(thermal_path)), name)


def _nearest(stream):
    """stamp (ns) -> the index in `stream` ([(stamp ns, ...)]) of the message stamped nearest it."""
    stamps = np.array([stamp for stamp, *_ in stream], np.int64)
    order = np.argsort(stamps, kind="stable")
    sorted_stamps = stamps[order]

    def nearest(stamp: int) -> int:
        at = int(np.searchsorted(sorted_stamps, stamp))
        near = [i for i in (at - 1, at) if 0 <= i < len(sorted_stamps)]
        return int(order[min(near, key=lambda i: abs(int(sorted_stamps[i]) - stamp))])
    return nearest


class BagSource(PairSource):
    """The visible and thermal topics of a rosbag2 (sqlite3 or MCAP; Image or CompressedImage).

    Every good visible message of the bag, in the bag's order, makes one pair with the thermal message
    whose header stamp is closest to it (a slower thermal camera's message with several: `sends_thermal`
    tells the one it goes out with); messages that cannot be read are skipped (and counted in `skipped`).
    The bag's serialised messages are kept in memory, decoded when a pair is played.
    """

    def __init__(self, bag, visible_topic: str, thermal_topic: str, deform: str = "none", seed: int = 0,
                 max_width: int = 0, fixed_rig: bool = False, read_cameras: bool = False):
        """`read_cameras`: also read the cameras' camera_info topics into `cameras` (bag.BagCameras; else None)."""
        from .bag import BagTopics
        from .fusion_outputs import prepare_input
        from .image_conversions import ImageConversionError
        from .sync import stamp_ns

        super().__init__(deform, seed, max_width, fixed_rig)
        if not visible_topic or not thermal_topic:
            raise CgrpError("bag: give visible_topic and thermal_topic too")
        self.streams = ([], [])  # per stream: [(header stamp ns, CDR bytes)]
        self.frames = ([], [])   # per stream: the messages' header frame_id, in the same order
        self.skipped = 0
        with BagTopics(bag, visible_topic, thermal_topic) as reader:
            self.types, self.msgtypes, self.compressed = reader.types, reader.msgtypes, reader.compressed
            self.cameras = reader.cameras() if read_cameras else None
            for stream, _, raw, msg in reader.messages():
                try:
                    if msg is None:
                        raise ImageConversionError("data", "cannot be deserialised")
                    prepare_input(msg, self.compressed[stream])
                except ImageConversionError:
                    self.skipped += 1
                    continue
                self.streams[stream].append((stamp_ns(msg), raw))
                self.frames[stream].append(msg.header.frame_id)
        visible, thermal = self.streams
        if not visible or not thermal:
            raise CgrpError(f"bag '{bag}': no readable messages on "
                            f"{visible_topic if not visible else thermal_topic}")
        nearest_thermal = _nearest(thermal)
        self.pairs = [(index, nearest_thermal(stamp)) for index, (stamp, _) in enumerate(visible)]
        # a slower thermal camera's frame is nearest to several visible frames, and the camera sent it once:
        # it goes out with the first of them (every paired frame goes out, ties and a short stream included)
        seen = set()
        self.thermal_sent = [t not in seen and not seen.add(t) for _, t in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def _array(self, stream: int, index: int) -> np.ndarray:
        from .fusion_outputs import as_array, prepare_input
        from .image_conversions import to_bgr

        _, raw = self.streams[stream][index]
        msg = prepare_input(self.types.deserialize_cdr(raw, self.msgtypes[stream]), self.compressed[stream])
        return np.array(to_bgr(as_array(msg), msg.encoding))  # a copy: not a view of the CDR buffer

    def recorded_arrays(self, index: int):
        """(visible, thermal) as recorded (BGR or mono, thermal not yet made single channel)."""
        visible_index, thermal_index = self.pairs[index]
        return self._array(0, visible_index), self._array(1, thermal_index)

    def arrays(self, index: int):
        return self._finish(*self.recorded_arrays(index), str(self.pairs[index][0]))

    def stamps(self, index: int):
        visible_index, thermal_index = self.pairs[index]
        return self.streams[0][visible_index][0], self.streams[1][thermal_index][0]

    def frame_ids(self, index: int):
        visible_index, thermal_index = self.pairs[index]
        return self.frames[0][visible_index], self.frames[1][thermal_index]

    def sends_thermal(self, index: int) -> bool:
        return self.thermal_sent[index]

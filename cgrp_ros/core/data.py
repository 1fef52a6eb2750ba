"""Finding and loading thermal/visible pairs (RoadScene layout or any two folders)."""
from __future__ import annotations

import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from glob import escape as glob_escape
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".pnm", ".webp", ".npy"}
REPO_ROOT = Path(__file__).resolve().parents[2]


def default_dataset_root() -> Path:
    """$CGRP_DATA, else ../shared/datasets/roadscene beside the repository."""
    return Path(os.environ.get("CGRP_DATA", REPO_ROOT.parent / "shared" / "datasets" / "roadscene"))


def shipped_folder(name: str) -> Path:
    """A folder the package ships (sample/, models/): the source tree's, else the installed
    share/cgrp_ros/NAME (colcon); the source tree's path when neither exists."""
    in_repo = REPO_ROOT / name
    if in_repo.is_dir():
        return in_repo
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory("cgrp_ros")) / name
    except Exception:
        return in_repo


def sample_dir() -> Path:
    """The bundled sample pairs (sample/README.md)."""
    return shipped_folder("sample")


def unwritable_reason(path: Path) -> str | None:
    """Why `path` cannot be written (its nearest existing folder is a file or is read-only), or None. Nothing
    is created: a command refused before its work leaves no trace."""
    try:
        folder = Path(path).parent.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic link loop (Python 3.11)
        return f"its folder cannot be resolved ({exc})"
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is not a folder"
    return None if os.access(folder, os.W_OK | os.X_OK) else f"{folder} is not writable"


@contextmanager
def replaced_on_success(path: Path):
    """Yields a temporary path beside `path` to write to; moves it over `path` when the block ends without
    an exception (and removes it otherwise): an interruption leaves the old file, never a truncated one.
    The name is this writer's own: two writers of one file (two nodes saving one calibration_file) each
    rename a whole file, and a reader sees one of them. A symbolic link is followed (its target is
    replaced, the link stays), and the file keeps its permissions."""
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    _remove_left_behind(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is not None and Path(exc.filename) == tmp:  # named by the file asked for
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        if path.is_file():
            shutil.copymode(path, tmp)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from None


LEFT_BEHIND_AGE_S = 600  # a temporary file this old whose writer is gone was left by a killed writer


def _remove_left_behind(path: Path) -> None:
    """Remove `replaced_on_success`'s temporary files of `path` that a killed writer left: their process
    is gone and they are older than LEFT_BEHIND_AGE_S (the age guards a writer on another machine that
    shares the folder, whose pid means nothing here)."""
    for tmp in path.parent.glob(f"{glob_escape(path.name)}.*-*.tmp"):
        pid = tmp.name[len(path.name) + 1:].split("-", 1)[0]
        try:
            if not pid.isdigit() or _process_exists(int(pid)) or time.time() - tmp.stat().st_mtime < LEFT_BEHIND_AGE_S:
                continue
            tmp.unlink()
        except OSError:  # gone meanwhile, or not ours to remove
            continue


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process (or a pid no process can have)
        return True
    return True


def read_image(path, flags=cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """Read an image (or .npy array) as stored: uint8/uint16, mono or BGR. Raises InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except Exception as exc:  # numpy raises several types for corrupt files
            raise InputError(f"{path}: not a readable .npy array ({exc})") from None
    if path.stat().st_size == 0:
        raise InputError(f"{path}: an empty file")
    jpeg, complete = _jpeg_ends(path)
    if jpeg and not complete:
        # libjpeg decodes the part that is there and fills the rest with grey, saying so only on stderr
        raise InputError(f"{path}: a truncated JPEG (no end-of-image marker): not read")
    image = cv2.imread(str(path), flags)
    if image is None:
        named = path.suffix.lower() in (".jpg", ".jpeg") and not jpeg
        raise InputError(f"{path}: not a readable image" + (" (named .jpg, but not a JPEG)" if named else ""))
    return image


def _jpeg_ends(path: Path) -> tuple:
    """(whether the file is a JPEG by its content: OpenCV reads a PNG named .jpg as a PNG, whether its
    last 4 KB hold a JPEG end-of-image marker: some writers pad after it), in one opening."""
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return False, False
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 4096))
        return True, b"\xff\xd9" in f.read()


def read_split(path) -> list[str]:
    """File names listed one per line (blank lines and # comments ignored). InputError naming the file
    when it cannot be read."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the list of names ({exc.strerror or exc})") from None
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


@dataclass
class PairListing:
    pairs: list          # [(name, visible_path, thermal_path)]
    unpaired: list       # [path] with no partner in the other folder
    not_found: list = field(default_factory=list)  # [name] listed in `names` but in neither folder
    duplicates: list = field(default_factory=list)  # [(path used, [paths of the same stem left out])]
    unsupported: dict = field(default_factory=dict)  # {unpaired path: its namesake of a type not read, other folder}
    empty: list = field(default_factory=list)  # [folder] of the two that holds no image at all

    def problems(self) -> list:
        """One line per file left out or listed name missing: what cgrp fuse and calibrate report."""
        return ([f"{path}: no partner with the same name in the other folder{self._why_unpaired(path)}"
                 for path in self.unpaired]
                + [f"{name}: listed, but in neither folder" for name in self.not_found])

    def _why_unpaired(self, path) -> str:
        other = self.unsupported.get(path)
        if other is None:
            return ""
        return f" ({other} is there, of a type not read: use one of {', '.join(sorted(IMAGE_EXTENSIONS))})"

    def warnings(self) -> list:
        return [f"{', '.join(str(p) for p in left)}: the same name as {used}, which is used"
                for used, left in self.duplicates]

    def report(self, limit: int = 10) -> list:
        """`problems()` for a terminal: at most `limit` lines, then how many more; where nothing paired
        at all, an example name from each folder (pairs share a name: `0001.jpg` and `0001.png`)."""
        if self.empty:  # one line, not one per file of the other folder ("no partner with the same name")
            return [f"{folder}: no images in this folder (read: {', '.join(sorted(IMAGE_EXTENSIONS))})"
                    for folder in self.empty]
        lines = self.problems()
        shown = lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])
        by_folder = {}
        for path in self.unpaired:
            by_folder.setdefault(Path(path).parent, Path(path).name)
        if not self.pairs and len(by_folder) == 2:
            (a, name_a), (b, name_b) = by_folder.items()
            shown.append(f"no name is in both folders: e.g. '{name_a}' in {a} and '{name_b}' in {b}; a visible "
                         "and a thermal image pair up by the same name before the extension")
        return shown


def _by_stem(folder: Path, duplicates: list) -> dict:
    """{stem: path} of the images in `folder`; stems held by several files (x.jpg, x.png) keep the first
    in name order and go into `duplicates`."""
    found = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            found.setdefault(path.stem, []).append(path)
    duplicates += [(paths[0], paths[1:]) for paths in found.values() if len(paths) > 1]
    return {stem: paths[0] for stem, paths in found.items()}


def find_pairs(visible, thermal, names=None) -> PairListing:
    """Pair files of two folders by name stem (extensions may differ), or two single files.

    `names` (file names or stems) restricts the folders to a split.
    """
    visible, thermal = Path(visible), Path(thermal)
    if visible.is_file() != thermal.is_file() and (visible.is_dir() or thermal.is_dir()):
        raise InputError(f"{visible} is a {'file' if visible.is_file() else 'folder'} and {thermal} a "
                         f"{'file' if thermal.is_file() else 'folder'}: give two files or two folders")
    if visible.is_file() or thermal.is_file():
        missing = thermal if visible.is_file() else visible
        if not missing.is_file():
            raise InputError(f"{missing}: no such file")
        if names is not None:
            raise InputError(f"a list of names selects pairs of two folders; {visible} and {thermal} are files")
        return PairListing([(visible.stem, visible, thermal)], [])
    for folder in (visible, thermal):
        if not folder.is_dir():
            raise InputError(f"{folder}: no such file or folder")
    duplicates = []
    vis, th = _by_stem(visible, duplicates), _by_stem(thermal, duplicates)
    empty = [folder for folder, found in ((visible, vis), (thermal, th)) if not found]
    not_found = []
    if names is not None:
        wanted = {Path(n).stem for n in names}
        not_found = sorted(wanted - set(vis) - set(th))
        vis = {k: v for k, v in vis.items() if k in wanted}
        th = {k: v for k, v in th.items() if k in wanted}
        duplicates = [(used, left) for used, left in duplicates if used.stem in wanted]
    pairs = [(stem, vis[stem], th[stem]) for stem in sorted(vis) if stem in th]
    unpaired = [vis[s] for s in sorted(vis) if s not in th] + [th[s] for s in sorted(th) if s not in vis]
    unsupported = {}
    if unpaired:  # a partner of a type not read (x.jpg beside x.gif in the other folder) is worth naming
        for own, other in ((vis, thermal), (th, visible)):
            others = {p.stem: p for p in sorted(other.iterdir())
                      if p.is_file() and p.suffix.lower() not in IMAGE_EXTENSIONS}
            unsupported.update({own[stem]: others[stem] for stem in own
                                if stem in others and own[stem] in unpaired})
    return PairListing(pairs, unpaired, not_found, duplicates, unsupported, empty)


def load_split(root=None, split: str = "train"):
    """[(name, visible BGR uint8, thermal uint8)] of a RoadScene-layout folder's split."""
    root = Path(root) if root is not None else default_dataset_root()
    if not root.is_dir():
        raise InputError(f"dataset folder {root} not found (set CGRP_DATA or pass --data)")
    names = read_split(root / f"{split}.txt")
    if not names:
        raise InputError(f"{root / f'{split}.txt'}: lists no names")
    listing = find_pairs(root / "visible", root / "thermal", names)
    problems = listing.problems()
    if problems:  # a split is what was chosen to train on: fewer pairs than listed would go unnoticed
        more = f"; ... {len(problems) - 3} more" if len(problems) > 3 else ""
        raise InputError(f"{root / f'{split}.txt'}: {len(problems)} listed name(s) without a pair: "
                         f"{'; '.join(problems[:3])}{more}")
    return [(name, read_image(v, cv2.IMREAD_COLOR), read_image(t, cv2.IMREAD_GRAYSCALE))
            for name, v, t in listing.pairs]

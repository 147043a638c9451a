"""On-disk cache of teacher features, one float16 ``.npy`` per frame, so training never reruns the teacher.

Layout (``root`` unset: inside the scene folder; ``root`` set: ``<root>/<scene name>/...``, for read-only data)::

    <scene>/features/<teacher>_<H>x<W>/manifest.json
    <scene>/features/<teacher>_<H>x<W>/<frame_id>.npy      float16 [d*, h, w]

The directory name is the cache key (teacher name and teacher input resolution H x W), so changing either
reads a different, empty cache. The manifest records the teacher name, input resolution, feature size and width,
and a fingerprint of the teacher's weights; a reader that passes the fingerprint or width it expects sees a
cache built by other weights as stale (``valid`` is False, ``stale_reason`` says why, ``get`` returns None), and
``initialize`` for a different teacher deletes the stale frames before anything new is written. Frames are
written atomically (temporary file + rename), so an interrupted run leaves only whole frames behind.

Frame ids are the stems of the SensReader color images (``frames/color/<i>.jpg`` -> ``i``).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from gcross_core.data.frames import frame_order_key
from gcross_core.errors import InputError, StaleCacheError, reading
from gcross_core.files import atomic_path

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
MANIFEST_NAME = "manifest.json"
_FRAME_ID = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")

PathLike = Union[str, Path]


def cache_dir_for(scene_dir: PathLike, teacher_name: str, height: int, width: int,
                  root: Optional[PathLike] = None) -> Path:
    base = Path(root) / Path(scene_dir).resolve().name if root is not None else Path(scene_dir) / "features"
    return base / f"{teacher_name}_{int(height)}x{int(width)}"


class FeatureCache:
    """Teacher features of one scene for one (teacher, input resolution) key.

    ``fingerprint`` / ``feature_dim``: what the reader expects (``Teacher.fingerprint()``, ``Teacher.feature_dim``);
    leave them None to accept whatever the manifest says for this teacher name and resolution.
    """

    def __init__(self, scene_dir: PathLike, teacher_name: str, height: int, width: int,
                 root: Optional[PathLike] = None, fingerprint: Optional[str] = None,
                 feature_dim: Optional[int] = None):
        if int(height) <= 0 or int(width) <= 0:
            raise InputError(f"cache resolution {height}x{width} must be positive")
        self.scene_dir = Path(scene_dir)
        self.teacher_name = teacher_name
        self.height, self.width = int(height), int(width)
        self.dir = cache_dir_for(scene_dir, teacher_name, height, width, root)
        self.expected_fingerprint = fingerprint
        self.expected_feature_dim = feature_dim
        self.manifest: Optional[Dict[str, Any]] = None
        self.stale_reason: Optional[str] = None
        self.reload()

    # -- manifest ----------------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.dir / MANIFEST_NAME

    def reload(self) -> None:
        """Re-read the manifest from disk and re-check it against what this reader expects."""
        self.manifest, self.stale_reason = None, None
        if not self.manifest_path.is_file():
            self.stale_reason = f"no manifest at {self.manifest_path}"
            return
        try:
            self.manifest = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as e:
            self.stale_reason = f"unreadable manifest {self.manifest_path}: {e}"
            return
        self.stale_reason = self._mismatch(self.manifest)

    def _mismatch(self, m: Dict[str, Any], fingerprint: Optional[str] = None,
                  feature_dim: Optional[int] = None, feature_size: Optional[Sequence[int]] = None) -> Optional[str]:
        want = {"format": CACHE_FORMAT, "teacher": self.teacher_name, "input_height": self.height,
                "input_width": self.width, "dtype": "float16"}
        fp = fingerprint or self.expected_fingerprint
        dim = feature_dim if feature_dim is not None else self.expected_feature_dim
        if fp is not None:
            want["fingerprint"] = fp
        if dim is not None:
            want["feature_dim"] = int(dim)
        if feature_size is not None:
            want["feature_height"], want["feature_width"] = int(feature_size[0]), int(feature_size[1])
        diffs = [f"{k}={m.get(k)!r} (expected {v!r})" for k, v in want.items() if m.get(k) != v]
        return f"manifest {self.manifest_path} was written for another teacher or setting: " + ", ".join(diffs) if diffs else None

    @property
    def valid(self) -> bool:
        """True when a manifest exists and matches this reader's teacher, resolution (and fingerprint/width if given)."""
        return self.manifest is not None and self.stale_reason is None

    def require(self) -> "FeatureCache":
        """Raise StaleCacheError (with the command that rebuilds the cache) unless ``valid``."""
        if not self.valid:
            raise StaleCacheError(
                f"teacher feature cache for {self.scene_dir} is not usable: {self.stale_reason}. Rebuild it with "
                f"`python training/cache_features.py --scenes {self.scene_dir} --teacher {self.teacher_name} "
                f"--height {self.height} --width {self.width}`")
        return self

    @property
    def feature_dim(self) -> int:
        return int(self.require().manifest["feature_dim"])

    @property
    def feature_size(self) -> tuple:
        m = self.require().manifest
        return int(m["feature_height"]), int(m["feature_width"])

    @property
    def fingerprint(self) -> Optional[str]:
        return None if self.manifest is None else self.manifest.get("fingerprint")

    def initialize(self, feature_dim: int, feature_size: Sequence[int], fingerprint: str,
                   extra: Optional[Dict[str, Any]] = None) -> bool:
        """Make this cache valid for the given teacher output; returns True when existing frames were kept.

        A manifest for the same teacher output is kept (and with it the frames already computed, so an
        interrupted caching run resumes); a different one is stale: its frames are deleted and the manifest
        rewritten, so nothing computed by another teacher can be read as if it were this one's.
        """
        if self.manifest is not None and self._mismatch(self.manifest, fingerprint, feature_dim, feature_size) is None:
            self.expected_fingerprint, self.expected_feature_dim = fingerprint, int(feature_dim)
            self.reload()
            return True
        if self.dir.exists():
            stale = list(self.dir.glob("*.npy"))
            if stale:
                logger.warning("%s: removing %d stale frames (%s)", self.dir, len(stale),
                               self.stale_reason or "new teacher output")
            for p in stale:
                p.unlink()
        self.dir.mkdir(parents=True, exist_ok=True)
        manifest = {"format": CACHE_FORMAT, "teacher": self.teacher_name, "input_height": self.height,
                    "input_width": self.width, "feature_dim": int(feature_dim),
                    "feature_height": int(feature_size[0]), "feature_width": int(feature_size[1]),
                    "fingerprint": fingerprint, "dtype": "float16", **(extra or {})}
        with atomic_path(self.manifest_path) as tmp:
            tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        self.expected_fingerprint, self.expected_feature_dim = fingerprint, int(feature_dim)
        self.reload()
        return False

    @classmethod
    def for_teacher(cls, scene_dir: PathLike, teacher, root: Optional[PathLike] = None) -> "FeatureCache":
        """Open (and initialize, discarding stale frames) the cache of ``teacher`` (a ``Teacher``) for a scene."""
        h, w = teacher.input_size
        cache = cls(scene_dir, teacher.name, h, w, root=root, fingerprint=teacher.fingerprint(),
                    feature_dim=teacher.feature_dim)
        cache.initialize(teacher.feature_dim, teacher.output_size, teacher.fingerprint(),
                         extra={"teacher_repr": teacher.extra_repr()})
        return cache

    # -- frames --------------------------------------------------------------------------------------------
    def _frame_path(self, frame_id: Union[int, str]) -> Path:
        fid = str(frame_id)
        if not _FRAME_ID.match(fid):
            raise InputError(f"frame id {fid!r} must be a plain name (letters, digits, '_', '-', '.')")
        return self.dir / f"{fid}.npy"

    def frame_ids(self) -> List[str]:
        """Ids of the frames stored (empty when the cache is not valid)."""
        if not self.valid:
            return []
        ids = [p.stem for p in self.dir.glob("*.npy")]
        return sorted(ids, key=frame_order_key)

    def has(self, frame_id: Union[int, str]) -> bool:
        return self.valid and self._frame_path(frame_id).is_file()

    def get(self, frame_id: Union[int, str]) -> Optional[np.ndarray]:
        """float16 [d*, h, w] of a frame, or None when the cache is not valid or the frame was not computed."""
        if not self.valid:
            return None
        path = self._frame_path(frame_id)
        if not path.is_file():
            return None
        with reading(path, "a .npy array of cached teacher features"):
            arr = np.load(path, allow_pickle=False)
        m = self.manifest
        expected = (m["feature_dim"], m["feature_height"], m["feature_width"])
        if arr.dtype != np.float16 or tuple(arr.shape) != tuple(expected):
            raise StaleCacheError(f"{path} holds {arr.dtype} {tuple(arr.shape)}, expected float16 {expected} "
                                  "per its manifest; delete the folder and rebuild the cache")
        return arr

    def put(self, frame_id: Union[int, str], features) -> Path:
        """Store one frame's features [d*, h, w] (numpy or torch, any float dtype) as float16."""
        if not self.valid:
            raise StaleCacheError(f"cannot write to {self.dir}: {self.stale_reason}; call initialize() first")
        if hasattr(features, "detach"):
            features = features.detach().cpu().float().numpy()
        arr = np.asarray(features)
        m = self.manifest
        expected = (m["feature_dim"], m["feature_height"], m["feature_width"])
        if tuple(arr.shape) != tuple(expected):
            raise ValueError(f"features for frame {frame_id} have shape {tuple(arr.shape)}, expected {expected}")
        peak = float(np.abs(arr).max()) if arr.size else 0.0
        if not np.isfinite(peak) or peak > float(np.finfo(np.float16).max):
            raise ValueError(f"features for frame {frame_id} do not fit float16 "
                             f"(max |x| = {peak:.3g}; float16 holds up to 65504)")
        half = arr.astype(np.float16)
        path = self._frame_path(frame_id)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, half, allow_pickle=False)
        return path


__all__ = ["FeatureCache", "StaleCacheError", "cache_dir_for", "CACHE_FORMAT"]

"""Labelled RGB-D frames -> labelled scene folders (2D label / instance images fused into 3D labels).

Input: a scene whose frames (SensReader layout, ``gcross_core.data.frames``) carry ``label/<i>.png``
(semantic id per pixel, 0 = unlabelled) and optionally ``instance/<i>.png`` (instance id per pixel,
0 = none), as ScanNet's 2D label exports, mOSD or a user's own annotated frames do. Label images live in
the color camera and are resampled (nearest) onto the depth grid like the color is.

Fusion (``gcross_core.mapping.frame_sets.fuse_labelled_frames``): every valid depth pixel votes its label and
its instance id into the voxel it falls in; a voxel takes the majority label and the majority instance
id (ties: the smaller id), ignoring 0 (unlabelled / none). A voxel with no labelled pixel gets -1. At
occlusion boundaries, where one frame's annotation bleeds onto the surface behind, the frames that see
the voxel clearly outvote it. Instance ids must name the same object in every frame of a scene (as
ScanNet's do; mOSD scenes are single frames).

The class map turns label ids into class indices: ``{1: "table", 2: "object"}`` makes id 1 class 0 and
id 2 class 1 (``parse_class_map("table,object")``; explicit ids: ``"3:table,7:object"``). A label id the
map does not name is an error naming the scene and the id. The world frame is rotated so that z is up
(``gcross_core.data.gravity``) before the frames are fused, so points and written poses agree.

Output (``gcross_core.data.scene`` layout): coord, color, normal, ``segment.npy`` (class index, -1 =
unlabelled), ``instance.npy`` (id, -1 = none), ``class_names.json`` (the classes file, in index order),
and ``frames/`` with the rotated poses and the label / instance images.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from gcross_core.data.frames import SensReaderFrames, find_frames_dir
from gcross_core.data.gravity import estimate_up, parse_up, rotation_to_z_up
from gcross_core.data.scene import Scene, write_scene
from gcross_core.errors import InputError
from gcross_core.mapping.frame_sets import fuse_labelled_frames

log = logging.getLogger(__name__)

PathLike = Union[str, Path]


def parse_class_map(text: str) -> Dict[int, str]:
    """``"table,object"`` -> {1: table, 2: object}; ``"3:table,7:object"`` -> {3: table, 7: object}.

    Names must be unique and ids positive (0 is the unlabelled id of label images).
    """
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise InputError(f"class map {text!r} is empty, expected names such as 'table,object' or '3:table,7:object'")
    out: Dict[int, str] = {}
    explicit = [":" in t for t in items]
    if any(explicit) and not all(explicit):
        raise InputError(f"class map {text!r} mixes 'id:name' and plain names; use one form")
    for k, t in enumerate(items, start=1):
        if ":" in t:
            sid, name = t.split(":", 1)
            try:
                i = int(sid)
            except ValueError:
                raise InputError(f"class map item {t!r}: {sid!r} is not an integer label id") from None
        else:
            i, name = k, t
        name = name.strip()
        if i <= 0:
            raise InputError(f"class map item {t!r}: label ids start at 1 (0 = unlabelled)")
        if i in out or not name or name in out.values():
            raise InputError(f"class map {text!r}: ids and names must be unique and non-empty")
        out[i] = name
    return out


def class_names_of(class_map: Mapping[int, str]) -> Tuple[str, ...]:
    """Class names in class-index order (ascending label id)."""
    return tuple(class_map[i] for i in sorted(class_map))


def apply_class_map(label_ids: np.ndarray,  # [N] int, -1 = no label
                    class_map: Mapping[int, str], where: str = "labels") -> np.ndarray:  # -> [N] int64
    """Label ids -> class indices (ids in ascending order -> 0, 1, ...); -1 stays -1.

    Raises InputError naming ``where`` and the ids when an id is not in the map.
    """
    ids = np.asarray(label_ids, dtype=np.int64)
    known = np.array(sorted(class_map), dtype=np.int64)
    present = np.unique(ids[ids >= 0])
    unknown = np.setdiff1d(present, known)
    if len(unknown):
        raise InputError(f"{where}: label ids {unknown.tolist()} are not in the class map "
                         f"{ {int(k): v for k, v in class_map.items()} }; name them (e.g. --classes "
                         "'1:table,2:object,5:chair') or fix the label images")
    out = np.full(len(ids), -1, dtype=np.int64)
    m = ids >= 0
    out[m] = np.searchsorted(known, ids[m])
    return out


@dataclass(frozen=True)
class LabelledFramesConfig:
    voxel_size_m: float = 0.01  # fusion voxel (the scene's point spacing)
    every: int = 1  # fuse every k-th frame
    up: str = "plane"  # cameras | plane | x,y,z (gcross_core.data.gravity.parse_up)
    max_depth_m: float = 5.0
    plane_threshold_m: float = 0.01  # RANSAC inlier distance of the plane method
    color_format: str = "png"  # frames written into the scene folder


def find_frame_scenes(root: PathLike) -> List[Path]:
    """Scene folders under ``root`` (``root`` itself included) that hold SensReader frames, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"scenes folder {root} does not exist")
    if find_frames_dir(root) is not None:
        return [root]
    found = sorted({p.parent.parent if p.parent.name == "frames" else p.parent
                    for p in root.rglob("color") if p.is_dir() and find_frames_dir(p.parent) is not None},
                   key=lambda p: str(p))
    if not found:
        raise FileNotFoundError(f"{root} holds no scene with frames (color/ depth/ pose/ in <scene>/frames/)")
    return found


def prepare_labelled_scene(scene_dir: PathLike, out_dir: PathLike, class_map: Optional[Mapping[int, str]],
                           cfg: LabelledFramesConfig = LabelledFramesConfig(), overwrite: bool = False) -> Dict:
    """Fuse one frames scene (with or without label images) into a scene folder; returns a summary.

    Without ``label/`` images (or with ``class_map=None``) the scene gets points only (unlabelled frames
    for pretraining). Written atomically by :func:`gcross_core.data.scene.write_scene`.
    """
    scene_dir, out_dir = Path(scene_dir), Path(out_dir)
    fdir = find_frames_dir(scene_dir)
    if fdir is None:
        raise FileNotFoundError(f"{scene_dir} has no frames (expected <scene>/frames/color, depth, pose)")
    frames = SensReaderFrames(fdir)
    if len(frames) == 0:
        raise InputError(f"{fdir} has no frames with a valid pose")
    has_labels = frames.has_id_images("label") and class_map is not None
    has_inst = frames.has_id_images("instance")
    method, up_given = parse_up(cfg.up)
    points = None
    if method == "plane":
        # A coarse fusion to find the plane; the scene itself is fused after rotating the poses, so the
        # voxels are cells of the z-up frame and re-fusing the written frames gives the same points.
        points = _fuse(frames, {}, cfg, coarse=True)[0]
    up = estimate_up(frames, method, up_given, points=points, every=cfg.every,
                     distance_threshold=cfg.plane_threshold_m)
    T = rotation_to_z_up(up)
    upright = frames.transformed(T)
    images = {}
    if has_labels:
        images["label"] = lambda i: frames.registered_id_image(i, "label")
    if has_inst:
        images["instance"] = lambda i: frames.registered_id_image(i, "instance")
    coord, color, normal, votes = _fuse(upright, images, cfg)
    segment = instance = names = None
    if has_labels:
        segment = apply_class_map(votes["label"], class_map, where=f"scene {scene_dir}")
        names = class_names_of(class_map)
    if has_inst:
        instance = votes["instance"]
    scene = Scene(scene_dir.name, coord, color, normal, segment=segment, instance=instance, frames=upright,
                  class_names=names)
    write_scene(scene, out_dir, color_format=cfg.color_format, overwrite=overwrite)
    for kind in ("label", "instance"):
        if frames.has_id_images(kind):
            _copy_id_images(frames, fdir / kind, out_dir / "frames" / kind)
    summary = {"scene": str(scene_dir), "out": str(out_dir), "points": int(len(coord)), "frames": len(frames),
               "up": [float(x) for x in up], "up_method": method,
               "labelled_points": int((segment >= 0).sum()) if segment is not None else 0,
               "instances": int(len(np.unique(instance[instance >= 0]))) if instance is not None else 0}
    log.info("%s -> %s: %d points, %d labelled, %d instances, up %s (%s)", scene_dir, out_dir, summary["points"],
             summary["labelled_points"], summary["instances"], np.round(up, 3).tolist(), method)
    return summary


def _fuse(frames, images, cfg: LabelledFramesConfig, coarse: bool = False):
    vs = cfg.voxel_size_m * (2 if coarse else 1)
    return fuse_labelled_frames(frames, images, vs, every=cfg.every, max_depth_m=cfg.max_depth_m)


def _copy_id_images(frames: SensReaderFrames, src: Path, dst: Path) -> None:
    """label/ or instance/ images renamed to the written frames' numbering (0, 1, ... in frame order)."""
    dst.mkdir(parents=True, exist_ok=True)
    for n, fid in enumerate(frames.frame_ids):
        p = src / f"{fid}.png"
        if p.is_file():
            shutil.copyfile(p, dst / f"{n}.png")


def prepare_labelled_scenes(root: PathLike, out: PathLike, class_map: Optional[Mapping[int, str]],
                            cfg: LabelledFramesConfig = LabelledFramesConfig(), overwrite: bool = False,
                            scenes: Optional[Sequence[str]] = None) -> List[Dict]:
    """Every frames scene under ``root`` -> ``out/<its path relative to root>``; finished ones are skipped
    unless ``overwrite``. ``scenes``: only these scene folder names."""
    root, out = Path(root), Path(out)
    found = find_frame_scenes(root)
    if scenes:
        want = set(scenes)
        found = [p for p in found if p.name in want]
        if not found:
            raise InputError(f"none of the scenes {sorted(want)} is under {root}")
    done = []
    for src in found:
        rel = src.relative_to(root) if src != root else Path(src.name)
        dst = out / rel
        if dst.exists() and not overwrite:
            log.info("%s exists; skipped (overwrite to redo)", dst)
            continue
        done.append(prepare_labelled_scene(src, dst, class_map, cfg, overwrite=overwrite))
    return done

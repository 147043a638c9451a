"""The official ScanNet v2 release layout: annotation files, the conversion of one scan into a scene
folder, and of a whole release (``training/prepare_scannet.py`` is its command line). The file formats it
reads have their own modules: :mod:`gcross_core.data.ply` and :mod:`gcross_core.data.mesh` (meshes),
:mod:`gcross_core.data.sens` (RGB-D frames).

Per scan ``scans/<scene>/``:
  ``<scene>_vh_clean_2.ply``                 mesh: vertex x y z red green blue (alpha), faces
  ``<scene>_vh_clean_2.labels.ply``          same vertices with an NYU40 ``label`` per vertex
  ``<scene>_vh_clean_2.0.010000.segs.json``  ``segIndices``: over-segment id per vertex
  ``<scene>.aggregation.json``               ``segGroups``: objects = (objectId, raw label, segment ids)
  ``<scene>.sens``                           RGB-D frames with poses (see :mod:`gcross_core.data.sens`)
and ``scannetv2-labels.combined.tsv`` mapping each raw label to an NYU40 id and a ScanNet label id.

Labels follow Pointcept's preparation: segment20 and segment200 come from the aggregation (raw label ->
tsv ``nyu40id`` -> ScanNet20 index, raw label -> tsv ``id`` -> ScanNet200 index), instance is the
object id; vertices in no annotated object get -1. Scans without an aggregation but with a labels PLY get
segment20 from its NYU40 labels; test scans get none.
"""
from __future__ import annotations

import csv
import json
import logging
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm import tqdm

from gcross_core.cli import BAD_INPUT
from gcross_core.data.classes import SCANNET20_CLASSES, nyu40_to_scannet20, scannet_id_to_scannet200
from gcross_core.data.mesh import read_mesh, vertex_normals
from gcross_core.data.ply import read_ply
from gcross_core.data.scene import Scene, write_scene
from gcross_core.data.sens import SensFile
from gcross_core.errors import InputError

log = logging.getLogger(__name__)

PathLike = Union[str, Path]


@dataclass(frozen=True)
class LabelMap:
    """raw category -> (NYU40 id, ScanNet label id) from scannetv2-labels.combined.tsv."""

    nyu40: Dict[str, int]
    scannet_id: Dict[str, int]

    @classmethod
    def from_tsv(cls, path: PathLike) -> "LabelMap":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"label map {path} is missing (scannetv2-labels.combined.tsv)")
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows or not {"raw_category", "id", "nyu40id"} <= set(rows[0]):
            raise InputError(f"{path}: expected a tab-separated table with columns raw_category, id, nyu40id")
        nyu40, sid = {}, {}
        for line, r in enumerate(rows, start=2):
            raw = (r["raw_category"] or "").strip()
            if not raw:
                continue
            try:
                nyu40[raw] = int(r["nyu40id"]) if (r["nyu40id"] or "").strip() else 0
                sid[raw] = int(r["id"]) if (r["id"] or "").strip() else 0
            except ValueError:
                raise InputError(f"{path} line {line}: id {r['id']!r} and nyu40id {r['nyu40id']!r} must be "
                                 f"integers") from None
        return cls(nyu40, sid)


def read_json(path: PathLike, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} is missing")
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise InputError(f"{what} {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{what} {path} holds a JSON {type(data).__name__}, expected an object")
    return data


def labels_from_aggregation(seg_indices: np.ndarray,  # [V] over-segment id per vertex
                            seg_groups: List[dict], label_map: LabelMap
                            ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(segment20 [V], segment200 [V], instance [V]) int64, -1 where no annotated object covers a vertex."""
    n = len(seg_indices)
    nyu40 = np.zeros(n, dtype=np.int64)
    sid = np.zeros(n, dtype=np.int64)
    instance = np.full(n, -1, dtype=np.int64)
    order = np.argsort(seg_indices, kind="stable")
    sorted_segs = seg_indices[order]
    unknown = set()
    for g in seg_groups:
        segs = np.asarray(g.get("segments", []), dtype=np.int64)
        lo = np.searchsorted(sorted_segs, segs, "left")
        hi = np.searchsorted(sorted_segs, segs, "right")
        pts = order[np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)])] if len(segs) else np.zeros(0, int)
        raw = str(g.get("label", "")).strip()
        if raw not in label_map.nyu40:
            unknown.add(raw)
        nyu40[pts] = label_map.nyu40.get(raw, 0)
        sid[pts] = label_map.scannet_id.get(raw, 0)
        instance[pts] = int(g.get("objectId", g.get("id", -1)))
    if unknown:
        log.debug("raw labels not in the label map (ignored): %s", sorted(unknown))
    return nyu40_to_scannet20(nyu40), scannet_id_to_scannet200(sid), instance


@dataclass(frozen=True)
class ScanNetPrepConfig:
    frame_every: int = 10  # keep every k-th .sens frame: at 30 Hz neighbouring frames are near duplicates
    frame_width: int = 640  # output frame size; 640x480 is ScanNet's depth grid, so depth is not resampled
    frame_height: int = 480
    frames: bool = True  # decode the .sens at all


def scan_files(scan_dir: PathLike) -> Dict[str, Path]:
    scan_dir = Path(scan_dir)
    s = scan_dir.name
    return {
        "mesh": scan_dir / f"{s}_vh_clean_2.ply",
        "labels": scan_dir / f"{s}_vh_clean_2.labels.ply",
        "segs": scan_dir / f"{s}_vh_clean_2.0.010000.segs.json",
        "aggregation": scan_dir / f"{s}.aggregation.json",
        "sens": scan_dir / f"{s}.sens",
    }


def load_scannet_scan(scan_dir: PathLike, label_map: Optional[LabelMap],
                      cfg: ScanNetPrepConfig = ScanNetPrepConfig()) -> Tuple[Scene, Dict[str, np.ndarray]]:
    """One ScanNet scan -> (Scene with segment20 labels and lazily decoded frames, extra arrays such as
    segment200) ready for ``write_scene``."""
    files = scan_files(scan_dir)
    name = Path(scan_dir).name
    coord, color, faces = read_mesh(files["mesh"])
    normal = vertex_normals(coord, faces)
    n = len(coord)
    segment = instance = None
    extra: Dict[str, np.ndarray] = {}
    if files["aggregation"].is_file() or files["segs"].is_file():
        if label_map is None:
            raise InputError(f"{name}: annotations present but no label map (scannetv2-labels.combined.tsv) given")
        segs = read_json(files["segs"], "over-segmentation")
        if "segIndices" not in segs:
            raise InputError(f"{files['segs']} has no segIndices")
        seg_indices = np.asarray(segs["segIndices"], dtype=np.int64)
        if len(seg_indices) != n:
            raise InputError(f"{files['segs']} has {len(seg_indices)} segIndices but the mesh has {n} vertices")
        groups = read_json(files["aggregation"], "aggregation").get("segGroups")
        if groups is None:
            raise InputError(f"{files['aggregation']} has no segGroups")
        segment, seg200, instance = labels_from_aggregation(seg_indices, groups, label_map)
        extra["segment200"] = seg200
    if files["labels"].is_file():
        lv = read_ply(files["labels"]).get("vertex", {})
        if "label" not in lv or len(lv["label"]) != n:
            raise InputError(f"{files['labels']} must hold a 'label' per vertex ({n} vertices)")
        seg20_ply = nyu40_to_scannet20(lv["label"])
        if segment is None:
            segment = seg20_ply
        else:
            disagree = float(np.mean(seg20_ply != segment)) if n else 0.0
            if disagree > 0.01:
                log.warning("%s: labels PLY and aggregation disagree on %.1f%% of vertices (aggregation used)",
                            name, 100 * disagree)
    frames = None
    if cfg.frames:
        if cfg.frame_every < 1:
            raise InputError(f"frame_every must be >= 1, got {cfg.frame_every}")
        sens = SensFile(files["sens"])
        frames = sens.subset(range(0, len(sens), cfg.frame_every)).resized(cfg.frame_width, cfg.frame_height)
    scene = Scene(name, coord, color, normal, segment, instance, frames,
                  class_names=SCANNET20_CLASSES if segment is not None else None)
    return scene, extra


@dataclass(frozen=True)
class SceneFailure:
    """A scene that could not be converted: nothing of it was written."""

    scene: str
    message: str  # an InputError's message names the damaged file
    bad_input: bool  # the scan's files are missing, truncated or garbled (InputError); else the work failed


def prepare_scan(scan_dir: str, out_dir: str, tsv: Optional[str], cfg: dict, color_format: str = "jpg",
                 overwrite: bool = False) -> Tuple[str, Optional[SceneFailure], str, float]:
    """Convert one scan into a scene folder (atomically, see ``write_scene``); for process pools.

    Returns (scene name, None or the failure, message, seconds) and never raises: one corrupt scan must
    not stop a conversion of hundreds.
    """
    t0 = time.perf_counter()
    name = Path(scan_dir).name
    try:
        label_map = LabelMap.from_tsv(tsv) if tsv else None
        scene, extra = load_scannet_scan(scan_dir, label_map, ScanNetPrepConfig(**cfg))
        write_scene(scene, out_dir, extra_arrays=extra, color_format=color_format, overwrite=overwrite)
        n_frames = 0 if scene.frames is None else len(scene.frames)
        skipped = 0 if scene.frames is None else scene.frames.skipped_frames
        msg = f"{scene.num_points} points, {n_frames} frames written, {skipped} frames with invalid poses skipped"
        return name, None, msg, time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - reported by the caller
        bad_input = isinstance(e, BAD_INPUT)
        msg = " ".join(str(e).split()) if bad_input else f"{type(e).__name__}: {e}"
        return name, SceneFailure(name, msg, bad_input), msg, time.perf_counter() - t0


SPLITS = ("train", "val", "test")


def find_scans(root: PathLike) -> Dict[str, Path]:
    """scene name -> scan folder, for every ``scans/`` and ``scans_test/`` folder holding its mesh."""
    scans = {}
    for sub in ("scans", "scans_test"):
        d = Path(root) / sub
        if d.is_dir():
            for p in sorted(d.iterdir()):
                if p.is_dir() and (p / f"{p.name}_vh_clean_2.ply").is_file():
                    scans[p.name] = p
    return scans


def read_splits(splits_dir: PathLike) -> Dict[str, str]:
    """scene name -> split, from whichever split lists exist."""
    out = {}
    for split in SPLITS:
        f = Path(splits_dir) / f"scannetv2_{split}.txt"
        if f.is_file():
            for line in f.read_text().split():
                out[line.strip()] = split
    return out


def remove_stale_temporaries(out_root: PathLike) -> int:
    """Delete temporary folders a killed run left behind (``.<scene>.tmp-*`` / ``.<scene>.old-*``)."""
    out_root = Path(out_root)
    n = 0
    for parent in [out_root] + [out_root / s for s in SPLITS]:
        if parent.is_dir():
            for p in parent.glob(".*.tmp-*"):
                shutil.rmtree(p, ignore_errors=True)
                n += 1
            for p in parent.glob(".*.old-*"):
                shutil.rmtree(p, ignore_errors=True)
                n += 1
    return n


def prepare_scannet(root: PathLike, out: PathLike, tsv: Optional[PathLike] = None,
                    splits_dir: Optional[PathLike] = None, scenes: Optional[Sequence[str]] = None,
                    cfg: ScanNetPrepConfig = ScanNetPrepConfig(), color_format: str = "jpg",
                    overwrite: bool = False, workers: int = 2, progress: bool = True) -> List[SceneFailure]:
    """Convert the scans under ``root`` into scene folders under ``out``; returns the scenes that failed.

    ``tsv`` defaults to ``<root>/scannetv2-labels.combined.tsv`` and ``splits_dir`` to ``root``. With split
    lists, scenes go to ``<out>/<split>/<scene>`` (scenes in no list are skipped), otherwise to
    ``<out>/<scene>``. Finished scene folders are kept unless ``overwrite`` (resume); a failing scene is
    logged, leaves nothing behind and does not stop the others. Raises InputError when ``root`` holds no
    scans or ``scenes`` names one it does not hold.
    """
    root, out = Path(root), Path(out)
    scans = find_scans(root)
    if not scans:
        raise InputError(f"no scans found under {root}/scans or {root}/scans_test")
    if scenes:
        missing = sorted(set(scenes) - set(scans))
        if missing:
            raise InputError(f"scenes not found under {root}: {', '.join(missing)}")
        scans = {k: scans[k] for k in scenes}
    tsv = Path(tsv) if tsv else root / "scannetv2-labels.combined.tsv"
    if not tsv.is_file():
        log.warning("label map %s not found: scenes with annotations will fail", tsv)
        tsv = None
    splits = read_splits(splits_dir or root)
    jobs: List[Tuple[Path, Path]] = []  # (scan folder, scene folder)
    for name, scan_dir in scans.items():
        if splits:
            if name not in splits:
                log.warning("%s is in no split list; skipped", name)
                continue
            out_dir = out / splits[name] / name
        else:
            out_dir = out / name
        jobs.append((scan_dir, out_dir))

    out.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temporaries(out)
    if stale:
        log.info("removed %d temporary folders of an interrupted run", stale)
    todo = [j for j in jobs if overwrite or not j[1].exists()]
    log.info("%d scenes: %d already done, %d to convert", len(jobs), len(jobs) - len(todo), len(todo))
    failed: List[SceneFailure] = []
    bar = tqdm(total=len(todo), desc="scenes", unit="scene", disable=not progress)

    def report(result):
        name, failure, msg, seconds = result
        if failure is None:
            log.info("%s: %s (%.1f s)", name, msg, seconds)
        else:
            failed.append(failure)
            log.error("%s failed, nothing written: %s", name, msg)
        bar.update(1)

    # plain values only: the arguments cross into worker processes
    job_args = [(str(s), str(o), None if tsv is None else str(tsv), asdict(cfg), color_format, overwrite)
                for s, o in todo]
    if workers <= 1 or len(todo) <= 1:
        for a in job_args:
            report(prepare_scan(*a))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for fut in as_completed([pool.submit(prepare_scan, *a) for a in job_args]):
                report(fut.result())
    bar.close()
    if failed:
        log.error("%d of %d scenes failed: %s", len(failed), len(todo), ", ".join(sorted(f.scene for f in failed)))
    return sorted(failed, key=lambda f: f.scene)

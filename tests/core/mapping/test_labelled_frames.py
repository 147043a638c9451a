"""Labelled frames -> labelled scene folders: majority votes of 2D labels per voxel, instance ids, the class
map, the up direction, the prepare_frames command and the bag round trip (synthetic frames made here)."""
import json

import numpy as np
import pytest
from PIL import Image

from gcross_core.data.frames import Frame, FrameList, write_frames
from gcross_core.mapping.labelled_frames import (LabelledFramesConfig, apply_class_map, parse_class_map,
                                              prepare_labelled_scene, prepare_labelled_scenes)
from gcross_core.data.scene import load_scene
from gcross_core.errors import InputError

TABLETOP = {1: "table", 2: "object"}
Z_UP = "0,0,1"  # the synthetic worlds below are z-up already: no rotation


def _write_scene(root, frames, labels=None, instances=None):
    """A frames scene folder in the SensReader layout with label/ and instance/ PNGs (uint8 / uint16)."""
    fdir = root / "frames"
    write_frames(fdir, FrameList(frames), color_format="png")
    for kind, imgs, dtype in (("label", labels, np.uint8), ("instance", instances, np.uint16)):
        if imgs is None:
            continue
        (fdir / kind).mkdir()
        for i, img in enumerate(imgs):
            Image.fromarray(np.asarray(img, dtype)).save(fdir / kind / f"{i}.png")
    return root


def _plane_frame(w, h, f, cx, cy, z, pose=None):
    K = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1.0]])
    return Frame(color=np.full((h, w, 3), 100, np.uint8), depth_m=np.full((h, w), z, np.float32), K_color=K,
                 K_depth=K, cam_to_world=np.eye(4) if pose is None else pose)


def test_majority_vote_ignores_unlabelled_pixels_and_breaks_ties_to_the_smaller_id(tmp_path):
    # Fronto-parallel plane at z = 1 with f = 10 and the principal point at -0.5: pixel u sits at
    # x = (u + 0.5) / 10, so with 0.4 m voxels pixels 4k .. 4k+3 (and rows 0..3) share one voxel.
    labels = np.zeros((4, 20), np.uint8)
    labels[:, 0:4] = [1, 1, 1, 2]  # voxel 0: majority 1
    labels[:, 4:8] = [0, 0, 0, 2]  # voxel 1: 0 is no vote -> 2
    labels[:, 8:12] = 0  # voxel 2: no labelled pixel -> -1
    labels[:, 12:16] = [2, 2, 1, 1]  # voxel 3: tie -> the smaller id, 1
    labels[:, 16:20] = [2, 2, 2, 0]  # voxel 4: 2
    src = _write_scene(tmp_path / "src", [_plane_frame(20, 4, 10.0, -0.5, -0.5, 1.0)], [labels])
    cfg = LabelledFramesConfig(voxel_size_m=0.4, up=Z_UP)
    summary = prepare_labelled_scene(src, tmp_path / "out", TABLETOP, cfg)
    scene = load_scene(tmp_path / "out")
    order = np.argsort(scene.coord[:, 0])
    assert len(scene.coord) == 5 and summary["points"] == 5
    # class map: id 1 -> table (0), id 2 -> object (1)
    np.testing.assert_array_equal(scene.segment[order], [0, 1, -1, 0, 1])
    assert scene.class_names == ("table", "object")
    assert json.loads((tmp_path / "out" / "class_names.json").read_text()) == ["table", "object"]
    assert scene.instance is None  # no instance/ images


def _occlusion_frames(shift_px=(0, 6, -6), bleed_px=3):
    """A background plane (z = 2, label 1, instance 1) and a foreground square (z = 1, label 2, instance 5)
    seen by cameras translated sideways. The first frame's object mask bleeds ``bleed_px`` pixels onto
    the background around the square, as hand-drawn masks do at occlusion boundaries."""
    w, h, f = 64, 48, 40.0
    frames, labels, insts, truth = [], [], [], []
    for k, s in enumerate(shift_px):
        cx = (w - 1) / 2
        pose = np.eye(4)
        pose[0, 3] = s / f  # camera x in metres: the square moves by s pixels at z = 1
        v, u = np.mgrid[0:h, 0:w]
        x1 = (u - cx) / f + pose[0, 3]  # world x of the ray at z = 1
        y1 = (v - (h - 1) / 2) / f
        fg = (np.abs(x1) < 0.2) & (np.abs(y1) < 0.2)
        depth = np.where(fg, 1.0, 2.0).astype(np.float32)
        lab = np.where(fg, 2, 1).astype(np.uint8)
        if k == 0 and bleed_px:
            grown = fg.copy()
            for d in range(1, bleed_px + 1):
                grown[:, d:] |= fg[:, :-d]
                grown[:, :-d] |= fg[:, d:]
                grown[d:] |= fg[:-d]
                grown[:-d] |= fg[d:]
            lab = np.where(grown, 2, 1).astype(np.uint8)
        inst = np.where(lab == 2, 5, 1).astype(np.uint16)
        K = np.array([[f, 0, cx], [0, f, (h - 1) / 2], [0, 0, 1.0]])
        frames.append(Frame(color=np.where(fg[..., None], 200, 50).astype(np.uint8).repeat(3, 2), depth_m=depth,
                            K_color=K, K_depth=K, cam_to_world=pose))
        labels.append(lab)
        insts.append(inst)
    return frames, labels, insts


def test_occlusion_boundary_bleeding_is_outvoted_and_instances_survive(tmp_path):
    frames, labels, insts = _occlusion_frames()
    cfg = LabelledFramesConfig(voxel_size_m=0.1, up=Z_UP)
    prepare_labelled_scene(_write_scene(tmp_path / "all", frames, labels, insts), tmp_path / "out_all", TABLETOP,
                           cfg)
    prepare_labelled_scene(_write_scene(tmp_path / "one", frames[:1], labels[:1], insts[:1]), tmp_path / "out_one",
                           TABLETOP, cfg)
    for name, must_match in (("out_all", True), ("out_one", False)):
        s = load_scene(tmp_path / name)
        truth = np.where(s.coord[:, 2] < 1.5, 1, 0)  # near voxels are the object, far ones the table
        wrong = int((s.segment != truth).sum())
        if must_match:
            assert wrong == 0
            np.testing.assert_array_equal(s.instance, np.where(truth == 1, 5, 1))
            # background voxels hidden from the bleeding frame but seen by the others are labelled too
            assert (s.segment >= 0).all()
        else:
            assert wrong > 0  # the bleeding alone mislabels background voxels: the votes above matter


def test_instance_ids_and_unlabelled_regions(tmp_path):
    frames, labels, insts = _occlusion_frames(shift_px=(0,), bleed_px=0)
    labels[0][:, :8] = 0  # an unlabelled strip on the background
    insts[0][:, :8] = 0
    cfg = LabelledFramesConfig(voxel_size_m=0.1, up=Z_UP)
    prepare_labelled_scene(_write_scene(tmp_path / "s", frames, labels, insts), tmp_path / "o", TABLETOP, cfg)
    s = load_scene(tmp_path / "o")
    strip = s.coord[:, 0] < (8 - 31.5) / 40 * 2 - 0.05  # background x of pixel column 8 at z = 2, less a margin
    assert strip.sum() > 0
    assert (s.segment[strip] == -1).all() and (s.instance[strip] == -1).all()
    assert set(np.unique(s.instance[~strip])) <= {1, 5} and {1, 5} <= set(np.unique(s.instance))


def test_class_map_parsing_and_unknown_ids(tmp_path):
    assert parse_class_map("table,object") == {1: "table", 2: "object"}
    assert parse_class_map("3:table, 7:object") == {3: "table", 7: "object"}
    for bad in ("", "0:table", "table,table", "1:a,b", "x:table"):
        with pytest.raises(InputError):
            parse_class_map(bad)
    np.testing.assert_array_equal(apply_class_map(np.array([7, -1, 3, 7]), {3: "t", 7: "o"}), [1, -1, 0, 1])
    with pytest.raises(InputError, match=r"scene s1: label ids \[4\]"):
        apply_class_map(np.array([1, 4, 2]), TABLETOP, where="scene s1")
    # an id the map does not name, found in the images of a scene: the scene is named, nothing written
    frames, labels, insts = _occlusion_frames(shift_px=(0,), bleed_px=0)
    labels[0][0, 0] = 9
    labels[0][0:4, 0:4] = 9
    src = _write_scene(tmp_path / "bad", frames, labels, insts)
    with pytest.raises(InputError, match=r"bad.*\[9\]"):
        prepare_labelled_scene(src, tmp_path / "o", TABLETOP, LabelledFramesConfig(voxel_size_m=0.1, up=Z_UP))
    assert not (tmp_path / "o").exists()


def _tabletop_frame(w=80, h=60, f=60.0):
    """One frame in its own camera frame (identity pose, like mOSD): a table (z = 0, label 1, instance 1)
    with a sphere on it (label 2, instance 7), seen from above at 45 degrees; pixels beyond the table have
    no depth and no label."""
    eye = np.array([0.0, -0.6, 0.6])
    fwd = -eye / np.linalg.norm(eye)
    right = np.cross(fwd, [0, 0, 1.0])
    right /= np.linalg.norm(right)
    R = np.stack([right, np.cross(fwd, right), fwd], axis=1)  # camera axes (x right, y down, z fwd) in world
    v, u = np.mgrid[0:h, 0:w].astype(float)
    d_cam = np.stack([(u - (w - 1) / 2) / f, (v - (h - 1) / 2) / f, np.ones_like(u)], -1)
    d = d_cam @ R.T
    with np.errstate(divide="ignore", invalid="ignore"):
        t_tab = np.where(d[..., 2] < 0, -eye[2] / d[..., 2], np.inf)
        p = eye + t_tab[..., None] * d
        t_tab[(np.abs(p[..., 0]) > 0.4) | (np.abs(p[..., 1]) > 0.4)] = np.inf
        c, r = np.array([0.05, 0.0, 0.1]), 0.1
        oc = eye - c
        b = (d * oc).sum(-1)
        a = (d * d).sum(-1)
        disc = b * b - a * ((oc * oc).sum() - r * r)
        t_sph = np.where(disc > 0, (-b - np.sqrt(np.maximum(disc, 0))) / a, np.inf)
    t = np.minimum(t_tab, t_sph)
    depth = np.where(np.isfinite(t), t, 0).astype(np.float32)  # t along d_cam (z_cam = 1) is the depth
    sphere = t_sph < t_tab
    label = np.where(depth == 0, 0, np.where(sphere, 2, 1)).astype(np.uint8)
    inst = np.where(depth == 0, 0, np.where(sphere, 7, 1)).astype(np.uint16)
    color = np.where(sphere[..., None], [200, 40, 40], [120, 100, 80]).astype(np.uint8)
    K = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1.0]])
    return Frame(color=color, depth_m=depth, K_color=K, K_depth=K, cam_to_world=np.eye(4)), label, inst


def test_plane_up_makes_the_table_horizontal(tmp_path):
    frame, label, inst = _tabletop_frame()
    src = _write_scene(tmp_path / "scenes" / "learn" / "t0", [frame], [label], [inst])
    done = prepare_labelled_scenes(tmp_path / "scenes", tmp_path / "out", TABLETOP,
                                   LabelledFramesConfig(voxel_size_m=0.01, up="plane"))
    assert [d["out"] for d in done] == [str(tmp_path / "out" / "learn" / "t0")]
    s = load_scene(tmp_path / "out" / "learn" / "t0")
    table_z = s.coord[s.segment == 0, 2]
    assert table_z.std() < 0.003  # horizontal after the rotation (the camera frame had it at 45 degrees)
    assert np.median(s.coord[s.segment == 1, 2]) > table_z.mean() + 0.05  # the sphere above it: z is up
    # the written frames carry the rotated pose: re-fusing them gives the scene's points
    from gcross_core.mapping.frame_sets import fuse_frames_to_points

    again = fuse_frames_to_points(s.frames, 0.01)[0]
    assert len(again) == len(s.coord)
    np.testing.assert_allclose(np.sort(again, axis=0), np.sort(s.coord, axis=0), atol=1e-5)
    assert (tmp_path / "out" / "learn" / "t0" / "frames" / "label" / "0.png").is_file()
    assert prepare_labelled_scenes(tmp_path / "scenes", tmp_path / "out", TABLETOP) == []  # done: skipped
    assert src.is_dir()


def test_prepare_frames_cli(tmp_path):
    from training.prepare_frames import main

    frame, label, inst = _tabletop_frame()
    _write_scene(tmp_path / "in" / "a", [frame], [label], [inst])
    assert main(["--scenes", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--classes", "table,object",
                 "--up", "plane", "--voxel-size", "0.02"]) == 0
    s = load_scene(tmp_path / "out" / "a")
    assert s.class_names == ("table", "object") and set(np.unique(s.segment)) == {0, 1}
    assert main(["--scenes", str(tmp_path / "in"), "--out", str(tmp_path / "o2"), "--classes", "table"]) == 2
    assert main(["--scenes", str(tmp_path / "in"), "--out", str(tmp_path / "o3"), "--up", "sideways"]) == 2
    # without --classes the labels are ignored: points only
    assert main(["--scenes", str(tmp_path / "in"), "--out", str(tmp_path / "o4")]) == 0
    assert load_scene(tmp_path / "o4" / "a").segment is None


class _HeightSegmenter:
    """A deterministic stand-in for Segmenter: 'object' above a height, else 'table' (imperfect on purpose)."""

    class_names = ["table", "object"]
    num_classes = 2

    def __init__(self, z_threshold):
        self.z = z_threshold

    def predict(self, coord, color, normal, rotations=1, return_probs=False):
        labels = (np.asarray(coord)[:, 2] > self.z).astype(np.int64)
        probs = np.eye(2, dtype=np.float32)[labels]
        return labels, probs.max(1), probs if return_probs else None


def test_bag_round_trip_of_a_labelled_frame_scores_like_the_scene_folder(tmp_path):
    pytest.importorskip("rosbags")
    from gcross_core.mapping.pipeline import PipelineConfig
    from gcross_core.segmentation.evaluate import evaluate_scenes
    from gcross_ros.bag.cli import main as bag_main
    from gcross_ros.bag.evaluate import EvalConfig, evaluate_bag

    frame, label, inst = _tabletop_frame()
    _write_scene(tmp_path / "src", [frame], [label], [inst])
    voxel = 0.02
    prepare_labelled_scene(tmp_path / "src", tmp_path / "scene", TABLETOP,
                           LabelledFramesConfig(voxel_size_m=voxel, up="plane"))
    s = load_scene(tmp_path / "scene")
    table_z = float(np.median(s.coord[s.segment == 0, 2]))
    seg = _HeightSegmenter(table_z + 0.1)  # the lower half of the sphere is called table: mIoU < 1
    direct = evaluate_scenes(seg, [tmp_path / "scene"], "segment").metrics
    assert 0.3 < direct.miou < 0.95
    assert bag_main(["-q", "record", "--scene", str(tmp_path / "scene"), "--out", str(tmp_path / "bag")]) == 0
    res = evaluate_bag(tmp_path / "bag", seg, tmp_path / "report", PipelineConfig(voxel_size_m=voxel),
                       EvalConfig(radius_m=0.5 * voxel))
    assert res.coverage.uncovered_points == 0
    assert res.miou == pytest.approx(direct.miou, abs=1e-9)
    assert res.macc == pytest.approx(direct.macc, abs=1e-9)
    assert res.allacc == pytest.approx(direct.allacc, abs=1e-9)

"""prepare_scannet on tiny hand-written ScanNet files: labels, normals, frames, resume, corrupt scenes."""
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gcross_core.cli import EXIT_BAD_INPUT, exit_code_for
from gcross_core.data import SCANNET20_CLASSES, SCANNET200_CLASSES, load_scene
from gcross_core.data.classes import SCANNET200_IDS
from gcross_core.data.mesh import read_mesh, vertex_normals
from gcross_core.data.ply import read_ply
from gcross_core.data.scannet import ScanNetPrepConfig, prepare_scannet
from gcross_core.data.sens import SensFile
from gcross_core.errors import InputError
from gcross_core.geometry import pose_from_quat

VERTS = np.array([[0, 0, 0], [2, 0, 0], [0, 2, 0], [0, 0, 1],  # triangles A (area 2, +z) and B (area 1, +x)
                  [5, 5, 5], [6, 5, 5], [5, 6, 5], [5, 5, 6],  # triangles C (+z) and D (+x), equal areas
                  [9, 9, 9], [8, 8, 8]], dtype=np.float32)  # on no face
FACES = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
# area-weighted vertex normals, by hand: A contributes (0, 0, 4) = 2 x area x n, B (2, 0, 0), C (0, 0, 1), D (1, 0, 0)
EXPECTED_NORMALS = np.array([[2, 0, 4], [0, 0, 1], [2, 0, 4], [1, 0, 0], [1, 0, 1], [0, 0, 1], [1, 0, 1],
                             [1, 0, 0], [0, 0, 0], [0, 0, 0]], dtype=np.float64)
SEG_INDICES = [10, 10, 10, 11, 20, 20, 20, 30, 40, 50]
GROUPS = [("chair", [10]), ("kitchen cabinets", [11, 30]), ("ceiling", [20]), ("unlisted thing", [50])]
TSV_ROWS = [("chair", "chair", 5), ("kitchen cabinets", "kitchen cabinet", 3), ("ceiling", "ceiling", 22)]
NYU40 = [5, 5, 5, 3, 22, 22, 22, 3, 0, 0]


def ply_bytes(verts, colors, faces, label=None):
    props = "property float x\nproperty float y\nproperty float z\nproperty uchar red\nproperty uchar green\n" \
            "property uchar blue\nproperty uchar alpha\n" + ("property ushort label\n" if label is not None else "")
    head = (f"ply\nformat binary_little_endian 1.0\ncomment tiny test mesh\nelement vertex {len(verts)}\n{props}"
            f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n").encode()
    body = b""
    for i, (v, c) in enumerate(zip(verts, colors)):
        body += struct.pack("<3f4B", *v, *c, 255) + (struct.pack("<H", label[i]) if label is not None else b"")
    for f in faces:
        body += struct.pack("<B3i", 3, *f)
    return head + body


def sens_bytes(poses, colors, depths_mm, K_color, K_depth):
    (ch, cw), (dh, dw) = colors[0].shape[:2], depths_mm[0].shape
    K4 = lambda K: np.pad(K, ((0, 1), (0, 1))) + np.diag([0, 0, 0, 1.0])  # noqa: E731
    out = struct.pack("<IQ", 4, 6) + b"tester"
    for M in (K4(K_color), np.eye(4), K4(K_depth), np.eye(4)):
        out += struct.pack("<16f", *M.ravel())
    out += struct.pack("<ii4IfQ", 2, 1, cw, ch, dw, dh, 1000.0, len(poses))
    for k, (T, c, d) in enumerate(zip(poses, colors, depths_mm)):
        buf = io.BytesIO()
        Image.fromarray(c).save(buf, format="JPEG", quality=98)
        jpg, z = buf.getvalue(), zlib.compress(d.astype("<u2").tobytes())
        out += struct.pack("<16f4Q", *np.asarray(T, np.float32).ravel(), k, k, len(jpg), len(z)) + jpg + z
    return out


def write_scan(root, name, sens=True, truncate_sens=False, seed=0):
    rng = np.random.default_rng(seed)
    d = root / "scans" / name
    d.mkdir(parents=True)
    colors = rng.integers(0, 256, (len(VERTS), 3))
    (d / f"{name}_vh_clean_2.ply").write_bytes(ply_bytes(VERTS, colors, FACES))
    (d / f"{name}_vh_clean_2.labels.ply").write_bytes(ply_bytes(VERTS, colors, FACES, NYU40))
    (d / f"{name}_vh_clean_2.0.010000.segs.json").write_text(json.dumps({"sceneId": name, "segIndices": SEG_INDICES}))
    groups = [{"id": i, "objectId": i, "segments": segs, "label": label} for i, (label, segs) in enumerate(GROUPS)]
    (d / f"{name}.aggregation.json").write_text(json.dumps({"sceneId": name, "segGroups": groups}))
    frames = None
    if sens:
        K_color = np.array([[20.0, 0, 7.5], [0, 20.0, 5.5], [0, 0, 1]])
        K_depth = np.array([[10.0, 0, 3.5], [0, 10.0, 2.5], [0, 0, 1]])
        poses = [pose_from_quat(rng.normal(size=3), q / np.linalg.norm(q)) for q in rng.normal(size=(3, 4))]
        poses[1] = np.full((4, 4), -np.inf)  # tracking lost: ScanNet writes -inf
        colors_img = [np.full((12, 16, 3), c, np.uint8) for c in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
        depths = [rng.integers(300, 4000, (6, 8)).astype(np.uint16) for _ in range(3)]
        data = sens_bytes(poses, colors_img, depths, K_color, K_depth)
        (d / f"{name}.sens").write_bytes(data[:-40] if truncate_sens else data)
        frames = (poses, colors_img, depths)
    return d, frames


def write_tsv(root):
    head = "id\traw_category\tcategory\tcount\tnyu40id\teigen13id\tnyuClass\tnyu40class\teigen13class\n"
    rows = [f"{SCANNET200_IDS[SCANNET200_CLASSES.index(c200)]}\t{raw}\t{c200}\t1\t{nyu}\t0\tx\tx\tx\n"
            for raw, c200, nyu in TSV_ROWS]
    (root / "scannetv2-labels.combined.tsv").write_text(head + "".join(rows))


def test_prepare_scannet_labels_normals_frames_resume_and_corrupt_scene(tmp_path):
    root, out = tmp_path / "ScanNet", tmp_path / "out"
    _, (poses, colors, depths) = write_scan(root, "scene0000_00")
    write_scan(root, "scene0001_00", truncate_sens=True, seed=1)
    write_tsv(root)
    (root / "scannetv2_train.txt").write_text("scene0000_00\nscene0001_00\n")
    # the command line, run as its users do (a separate process)
    script = Path(__file__).resolve().parents[3] / "training" / "prepare_scannet.py"
    run = subprocess.run([sys.executable, str(script), "--scannet-root", str(root), "--out", str(out),
                          "--frame-every", "1", "--frame-size", "8x6", "--workers", "2", "--quiet"],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == EXIT_BAD_INPUT, run.stderr  # one scene failed, on its truncated .sens
    assert "scene0001_00 failed, nothing written" in run.stderr and "Traceback" not in run.stderr
    sens = root / "scans" / "scene0001_00" / "scene0001_00.sens"
    assert str(sens) in run.stderr.splitlines()[-1] and "1 scene failed" in run.stderr.splitlines()[-1]
    assert sorted(p.name for p in (out / "train").iterdir()) == ["scene0000_00"]  # nothing half-written

    s = load_scene(out / "train" / "scene0000_00")
    np.testing.assert_array_equal(s.coord, VERTS)
    expected = EXPECTED_NORMALS / np.maximum(np.linalg.norm(EXPECTED_NORMALS, axis=1, keepdims=True), 1e-30)
    np.testing.assert_allclose(s.normal, expected, atol=1e-6)
    i20, i200 = SCANNET20_CLASSES.index, SCANNET200_CLASSES.index
    np.testing.assert_array_equal(s.segment,
                                  [i20("chair")] * 3 + [i20("cabinet")] + [-1] * 3 + [i20("cabinet"), -1, -1])
    s200 = load_scene(out / "train" / "scene0000_00", segment="segment200")
    np.testing.assert_array_equal(s200.segment, [i200("chair")] * 3 + [i200("kitchen cabinet")] + [i200("ceiling")] * 3
                                  + [i200("kitchen cabinet"), -1, -1])
    np.testing.assert_array_equal(s.instance, [0, 0, 0, 1, 2, 2, 2, 1, -1, 3])

    # frames: the -inf pose is skipped; color registered onto the 8x6 depth grid
    assert len(s.frames) == 2
    for f, k in zip(s.frames, (0, 2)):
        np.testing.assert_allclose(f.cam_to_world, poses[k].astype(np.float32), atol=1e-6)
        np.testing.assert_allclose(f.depth_m, depths[k] / 1000.0, atol=1e-6)
        assert f.color.shape == (6, 8, 3) and np.abs(f.color.astype(int) - colors[k][:6, :8]).max() <= 6
        np.testing.assert_allclose(f.K_depth, [[10, 0, 3.5], [0, 10, 2.5], [0, 0, 1]], atol=1e-6)

    # resume (the library call the command makes): the finished scene is not redone
    stamp = (out / "train" / "scene0000_00" / "coord.npy").stat().st_mtime_ns
    cfg = ScanNetPrepConfig(frame_every=1, frame_width=8, frame_height=6)
    assert prepare_scannet(root, out, scenes=["scene0000_00"], cfg=cfg, progress=False) == []
    assert (out / "train" / "scene0000_00" / "coord.npy").stat().st_mtime_ns == stamp
    [failure] = prepare_scannet(root, out, cfg=cfg, workers=1, progress=False)
    assert failure.scene == "scene0001_00" and failure.bad_input and str(sens) in failure.message
    with pytest.raises(InputError, match="scene0009_00"):
        prepare_scannet(root, out, scenes=["scene0009_00"], cfg=cfg)
    with pytest.raises(InputError, match="no scans found"):
        prepare_scannet(tmp_path / "empty", out)


def test_a_scene_failing_at_run_time_is_exit_1_even_beside_bad_input(tmp_path, monkeypatch, capsys):
    from training.prepare_scannet import main

    root = tmp_path / "ScanNet"
    write_scan(root, "scene0000_00")
    write_scan(root, "scene0001_00", sens=False, seed=1)
    write_scan(root, "scene0002_00", truncate_sens=True, seed=2)
    write_tsv(root)
    argv = ["--scannet-root", str(root), "--out", str(tmp_path / "out"), "--workers", "1", "--quiet",
            "--frame-every", "1", "--frame-size", "8x6", "--scenes"]
    capsys.readouterr()
    assert main(argv + ["scene0001_00", "scene0002_00"]) == EXIT_BAD_INPUT  # a missing and a truncated .sens
    last = capsys.readouterr().err.splitlines()[-1]
    assert "2 scenes failed" in last and "scene0001_00.sens" in last

    def broken_write(scene, *args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("gcross_core.data.scannet.write_scene", broken_write)
    assert main(argv + ["scene0000_00", "scene0002_00"]) == 1  # the tool's own failure wins over bad input
    last = capsys.readouterr().err.splitlines()[-1]
    assert "2 scenes failed" in last and "scene0000_00: RuntimeError: disk on fire" in last


def test_sens_reader_header_frames_and_truncation(tmp_path):
    d, (poses, colors, depths) = write_scan(tmp_path, "scene0002_00")
    sens = SensFile(d / "scene0002_00.sens")
    assert (sens.header.color_width, sens.header.depth_height, sens.header.num_frames) == (16, 6, 3)
    assert sens.header.sensor_name == "tester" and sens.header.depth_shift == 1000.0
    assert len(sens) == 2 and sens.skipped_frames == 1 and sens.frame_ids == ["0", "2"]
    f = sens.frame(1)
    assert f.color.shape == (12, 16, 3) and f.depth_m.shape == (6, 8)
    np.testing.assert_allclose(f.depth_m, depths[2] / 1000.0, atol=1e-6)
    data = (d / "scene0002_00.sens").read_bytes()
    (d / "v3.sens").write_bytes(struct.pack("<I", 3) + data[4:])
    with pytest.raises(InputError, match="version 3, expected 4"):
        SensFile(d / "v3.sens")


def assert_one_line_input_error(exc_info, path):
    """What a command-line tool prints for it: one line naming the file, and exit status 2."""
    text = str(exc_info.value)
    assert str(path) in text and "\n" not in text
    assert exit_code_for(exc_info.value) == EXIT_BAD_INPUT


@pytest.mark.parametrize("cut", ["last_frame", "first_frame_header", "sensor_name", "header"])
def test_truncated_sens_is_an_input_error(tmp_path, cut):
    d, _ = write_scan(tmp_path, "scene0003_00")
    data = (d / "scene0003_00.sens").read_bytes()
    header_end = 4 + 8 + 6 + 4 * 64 + 4 * 4 + 2 * 4 + 4 + 8  # version, name, 4 matrices, compression, sizes...
    keep = {"last_frame": len(data) - 10, "first_frame_header": header_end + 20, "sensor_name": 14,
            "header": 100}[cut]
    path = d / "cut.sens"
    path.write_bytes(data[:keep])
    with pytest.raises(InputError, match="truncated") as exc_info:
        SensFile(path)
    assert_one_line_input_error(exc_info, path)


def test_ply_reader_ascii_mixed_polygons_big_endian_and_errors(tmp_path):
    ascii_ply = ("ply\nformat ascii 1.0\nelement vertex 4\nproperty float x\nproperty float y\nproperty float z\n"
                 "element face 2\nproperty list uchar int vertex_indices\nend_header\n"
                 "0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n3 0 2 1\n")
    (tmp_path / "a.ply").write_text(ascii_ply)
    ply = read_ply(tmp_path / "a.ply")
    np.testing.assert_array_equal(ply["vertex"]["y"], [0, 0, 1, 1])
    assert [list(f) for f in ply["face"]["vertex_indices"]] == [[0, 1, 2, 3], [0, 2, 1]]
    head = b"ply\nformat binary_big_endian 1.0\nelement vertex 2\nproperty double x\nproperty int id\nend_header\n"
    (tmp_path / "b.ply").write_bytes(head + struct.pack(">di", 1.5, 7) + struct.pack(">di", -2.0, 9))
    v = read_ply(tmp_path / "b.ply")["vertex"]
    np.testing.assert_array_equal(v["x"], [1.5, -2.0])
    np.testing.assert_array_equal(v["id"], [7, 9])
    (tmp_path / "c.ply").write_bytes(head + struct.pack(">di", 1.5, 7))
    with pytest.raises(InputError, match="truncated"):
        read_ply(tmp_path / "c.ply")
    with pytest.raises(ValueError, match="faces index vertices"):
        vertex_normals(VERTS, np.array([[0, 1, 99]]))


@pytest.mark.parametrize("cut", ["vertices", "faces", "inside_a_face", "header", "ascii"])
def test_truncated_ply_is_an_input_error(tmp_path, cut):
    mesh = ply_bytes(VERTS, np.zeros((len(VERTS), 3), int), FACES)
    body_start = mesh.index(b"end_header\n") + len(b"end_header\n")
    vertex_bytes = len(VERTS) * (3 * 4 + 4)
    ascii_ply = b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nelement face 1\n" \
                b"property list uchar int vertex_indices\nend_header\n0\n1\n2\n3 0 1\n"
    data = {"vertices": mesh[:body_start + vertex_bytes // 2],
            "faces": mesh[:body_start + vertex_bytes + 13],  # after the first face
            "inside_a_face": mesh[:-3],
            "header": mesh[:body_start - 20],
            "ascii": ascii_ply}[cut]
    path = tmp_path / "cut.ply"
    path.write_bytes(data)
    with pytest.raises(InputError, match="truncated|no end_header") as exc_info:
        read_ply(path)
    assert_one_line_input_error(exc_info, path)


def test_malformed_ply_and_mesh_are_input_errors(tmp_path):
    path = tmp_path / "bad.ply"
    path.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex many\nend_header\n")
    with pytest.raises(InputError, match="malformed PLY header line 'element vertex many'") as exc_info:
        read_ply(path)
    assert_one_line_input_error(exc_info, path)
    path.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\nnan?\n")
    with pytest.raises(InputError, match="not a number"):
        read_ply(path)
    path.write_bytes(ply_bytes(VERTS, np.zeros((len(VERTS), 3), int), np.array([[0, 1, 99]])))
    with pytest.raises(InputError, match="faces index vertices in \\[0, 99\\]") as exc_info:
        read_mesh(path)
    assert_one_line_input_error(exc_info, path)

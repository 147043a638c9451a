"""The tabletop experiments' own logic on tiny made-up scenes: category sets, per-set scoring with grouping
variants, the top view, the height bands of flat_objects, and the loss-curve comparison of
thread_reproducibility (the experiments themselves run for minutes on real data)."""
import numpy as np
import pytest

from experiments.flat_objects import BANDS, band_counts, band_name
from experiments.tabletop_instances import group_name, scene_sets, score_run, top_view
from experiments.thread_reproducibility import compare
from gcross_core.data.classes import TABLETOP_CLASSES
from gcross_core.data.scene import Scene, write_scene
from gcross_core.errors import InputError
from gcross_core.model.encoder import SpUNetConfig
from gcross_core.segmentation.instance import InstanceConfig
from gcross_core.segmentation.model import build_segmenter_checkpoint

TINY = SpUNetConfig(in_channels=6, base_channels=8, channels=(8, 8, 8, 8, 8, 8, 8, 8), layers=(1,) * 8)


def _tabletop(name, seed):
    """A 40 x 30 cm table at z = 0 (5 mm spacing) with one 6 cm cube on it."""
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.arange(0, 0.4, 0.01), np.arange(0, 0.3, 0.01))
    table = np.c_[gx.ravel(), gy.ravel(), np.zeros(gx.size)]
    g = np.arange(0, 0.06 + 1e-9, 0.01)
    cube = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3) + [0.1 + 0.01 * seed, 0.1, 0.0]
    coord = np.concatenate([table, cube]).astype(np.float32)
    segment = np.repeat([0, 1], [len(table), len(cube)])
    instance = np.repeat([-1, 5], [len(table), len(cube)])
    normal = np.tile(np.float32([0, 0, 1]), (len(coord), 1))
    return Scene(name, coord, rng.uniform(0, 255, coord.shape), normal, segment, instance,
                 class_names=TABLETOP_CLASSES)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tabletop")
    for n in (0, 17, 25, 31):  # one frame of each mOSD test category
        write_scene(_tabletop(f"test{n}", n), root / "test" / f"test{n}", write_frames_too=False)
    write_scene(_tabletop("clutter_000", 7), root / "clutter" / "clutter_000", write_frames_too=False)
    return root


def test_scene_sets_follow_the_mosd_categories(folders):
    sets = scene_sets(folders / "test", folders / "clutter", None)
    assert {k: [p.name for p in v] for k, v in sets.items() if k not in ("test0-42", "clutter test")} == {
        "boxes": ["test0"], "stacked": ["test17"], "occluded": ["test25"], "cylinders": ["test31"]}
    assert len(sets["test0-42"]) == 4 and [p.name for p in sets["clutter test"]] == ["clutter_000"]
    with pytest.raises(InputError, match="categories"):
        scene_sets(folders / "clutter", folders / "clutter", None)  # no test<N> folders
    assert group_name(folders / "run_seed3") == "run" and group_name(folders / "run_s1") == "run"
    assert group_name(folders / "run") == "run"


def test_score_run_scores_every_set_with_every_variant(folders, tmp_path, one_torch_thread):
    cfg = InstanceConfig(stuff_classes=("table",), min_points=1, score_threshold=0.0)
    ckpt = build_segmenter_checkpoint(tmp_path / "ins.safetensors", TABLETOP_CLASSES, TINY, instance=cfg)
    sets = scene_sets(folders / "test", folders / "clutter", None)
    variants = {"own": [], "gated": ["normal_min_cos=0.3", "shifted_radius_m=0.02", "merge_centre_m=0.05"]}
    out = score_run(ckpt, sets, variants)
    assert set(out) == set(variants) and all(set(out[v]) == set(sets) for v in variants)
    for v in variants:
        for s, r in out[v].items():
            assert 0.0 <= r["ap50"] <= r["ap25"] <= 1.0 and 0.0 <= r["miou"] <= 1.0, (v, s)
        # all frames hold the category frames: the instances found add up
        assert out[v]["test0-42"]["instances"] == sum(out[v][c]["instances"]
                                                      for c in ("boxes", "stacked", "occluded", "cylinders"))
    with pytest.raises(ValueError):
        score_run(ckpt, sets, {"bad": ["normal_min_cos=2"]})


def test_top_view_shows_the_highest_point_of_each_pixel():
    coord = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.5], [0.02, 0.0, 0.1]], np.float32)
    img = top_view(coord, np.array([-1, 0, 1]), pixel_m=0.01)
    assert img.shape == (1, 3, 3)
    assert tuple(img[0, 0]) != (150, 150, 150)  # object 0 above the table point
    assert tuple(img[0, 1]) == (255, 255, 255) and tuple(img[0, 2]) != tuple(img[0, 0])


class _Says:
    """A stand-in segmenter labelling every point above ``min_height`` object."""
    class_names = list(TABLETOP_CLASSES)

    def __init__(self, min_height):
        self.min_height = min_height

    def predict(self, coord, color, normal):
        labels = (coord[:, 2] > self.min_height).astype(np.int64)
        return labels, np.ones(len(coord), np.float32), None


def test_flat_objects_bands_count_object_points_by_height(folders):
    scenes = sorted((folders / "test").iterdir())
    counts = band_counts(_Says(0.025), scenes)  # a model blind to the lowest 2.5 cm of an object
    low, mid, high = (counts[band_name(*BANDS[k])] for k in (0, 2, 4))
    assert low["object"] > 0 and low["object_as_object"] == 0
    assert 0 < mid["object_as_object"] < mid["object"]  # 2-4 cm: the 3 cm layer found, the 2 cm one not
    assert high["object"] == 0  # the cubes are 6 cm tall
    assert all(c["pred_object_true"] == c["pred_object"] for c in counts.values())  # no table said object
    with pytest.raises(InputError, match="table / object"):
        band_counts(type("S", (), {"class_names": ["wall", "floor"]})(), scenes)


def test_compare_reports_the_first_differing_step():
    assert compare([1.0, 0.9, 0.8], [1.0, 0.9, 0.8]) == {"max_abs_diff": 0.0, "first_differing_step": None,
                                                         "steps": 3, "final": (0.8, 0.8)}
    got = compare([1.0, 0.9, 0.8, 0.7], [1.0, 0.95, 0.8])
    assert got["first_differing_step"] == 2 and got["max_abs_diff"] == pytest.approx(0.05) and got["steps"] == 3

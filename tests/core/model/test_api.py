"""GaussianCrossModel: a pretraining checkpoint -> Gaussians of given points -> renders at cameras."""
import numpy as np
import pytest
import torch

from gcross_core.checkpoint import load_checkpoint, read_header, save_checkpoint, stamp_header
from gcross_core.config import from_dict
from gcross_core.data.scene import Scene
from gcross_core.data.synthetic import make_room
from gcross_core.errors import CheckpointError, InputError
from gcross_core.model.api import DEMO_MODEL, EvalInput, GaussianCrossModel, pinhole_cameras, save_model
from gcross_core.model.features import POINTCEPT_CONVENTION
from gcross_core.model.gaussiancross import GaussianCross, GaussianCrossConfig, mask_points
from gcross_core.pretraining.config import PretrainConfig
from gcross_core.pretraining.run import run_pretraining
from gcross_core.segmentation.segmenter import DEMO_CHECKPOINT

MODEL = {
    "encoder": {"base_channels": 8, "channels": [8, 16, 16, 8], "layers": [1, 1, 1, 1]},
    "head": {"grid": [16, 16, 8], "dense_channels": 8, "dense_blocks": 1, "head_hidden": 8, "feature_dim": 4},
    "grid_size_m": 0.1,
}


def _scene(seed=0, n=2500):
    rng = np.random.default_rng(seed)
    box = np.array([3.0, 2.5, 2.0])
    coord = rng.uniform(0, 1, (n, 3)) * box
    face = rng.integers(0, 6, n)
    coord[np.arange(n), face // 2] = np.where(face % 2, box[face // 2], 0.0)
    normal = np.zeros((n, 3), np.float32)
    normal[np.arange(n), face // 2] = np.where(face % 2, -1.0, 1.0)
    color = rng.uniform(0, 255, (n, 3))
    return Scene("box", coord.astype(np.float32), color.astype(np.float32), normal)


def _camera(width=32, height=24):
    # inside the box at its middle, looking along +x (OpenCV: z forward, y down)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([[0, -1, 0], [0, 0, -1], [1, 0, 0]], 1)  # columns: cam x, y, z in world
    c2w[:3, 3] = [0.5, 1.25, 1.0]
    K = np.array([[20.0, 0, width / 2], [0, 20.0, height / 2], [0, 0, 1]])
    return c2w, K


def _same(a, b):
    return len(a) == len(b) and torch.equal(a.means, b.means)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = GaussianCross(from_dict(GaussianCrossConfig, MODEL)).eval()
    path = save_model(tmp_path_factory.mktemp("api") / "model.safetensors", model)
    return model, path


EXACT = EvalInput(mask_ratio=0.0, batchnorm="running")  # what model.eval() computes on every grid cell


def test_saving_keeps_the_models_input_convention(saved, tmp_path):
    _, path = saved
    other = tmp_path / "pointcept_convention.safetensors"
    other.write_bytes(path.read_bytes())
    stamp_header(other, **POINTCEPT_CONVENTION.header_fields())
    model = GaussianCrossModel.from_checkpoint(other)
    assert model.convention == POINTCEPT_CONVENTION
    header = read_header(model.save(tmp_path / "again.safetensors"))
    assert (header.input_features, header.grid_lattice) == (POINTCEPT_CONVENTION.input_features,
                                                            POINTCEPT_CONVENTION.grid_lattice)


def test_checkpoint_round_trip_gives_the_models_gaussians(saved, one_torch_thread):
    model, path = saved
    api = GaussianCrossModel.from_checkpoint(path, eval_input=EXACT)
    scene = _scene()
    g = api.gaussians(scene)
    assert len(g) > 0 and g.features.shape[1] == 4
    # the same grid-sampled input through the original module gives the same Gaussians
    with torch.no_grad():
        ref = model(api.points(scene)).gaussians
    torch.testing.assert_close(g.means, ref.means)
    torch.testing.assert_close(g.colors, ref.colors)
    # arrays instead of a Scene: the same thing
    g2 = api.gaussians(coord=scene.coord, color=scene.color, normal=scene.normal)
    torch.testing.assert_close(g2.opacities, g.opacities)
    # Gaussians lie where the points are (world frame, no augmentation)
    lo, hi = scene.coord.min(0) - 0.5, scene.coord.max(0) + 0.5
    m = g.means.numpy()
    assert np.all((m > lo) & (m < hi))


def test_default_input_is_the_training_path(saved, one_torch_thread):
    model, path = saved
    api = GaussianCrossModel.from_checkpoint(path)
    assert api.mask_ratio == model.cfg.mask_ratio == 0.5
    scene = _scene()
    g = api.gaussians(scene)
    # by hand: the seeded mask of eq. 4, then encoder and head with BatchNorm on the batch's statistics
    masked, kept = mask_points(api.points(scene), 0.5, torch.Generator().manual_seed(0))
    twin = GaussianCross(model.cfg)
    twin.load_state_dict(model.state_dict())
    twin.train()
    with torch.no_grad():
        ref = twin.head(masked, twin.encoder(masked)).gaussians
    assert int(kept.sum()) == masked.coord.shape[0] < kept.numel()
    torch.testing.assert_close(g.means, ref.means)
    torch.testing.assert_close(g.features, ref.features)


def test_render_at_cameras(saved, one_torch_thread):
    _, path = saved
    api = GaussianCrossModel.from_checkpoint(path)
    c2w, K = _camera()
    cams = pinhole_cameras(np.stack([c2w, c2w]), K)
    out = api.render(api.gaussians(_scene()), cams, 32, 24)
    assert out.color.shape == (2, 24, 32, 3) and out.features.shape == (2, 24, 32, 4)
    covered = out.alpha[0] > 0.5
    assert covered.float().mean() > 0.5  # the box walls fill the view
    # the far wall is 2.5 m in front of the camera: depth where covered lies within the box
    d = out.expected_depth[0][covered]
    assert float(d.min()) > 0.0 and float(d.max()) < 4.0
    torch.testing.assert_close(out.color[0], out.color[1])


def test_wrong_checkpoints_are_refused(saved, tmp_path):
    _, path = saved
    with pytest.raises(CheckpointError, match="'segmenter' checkpoint"):
        GaussianCrossModel.from_checkpoint(DEMO_CHECKPOINT)
    tensors, header = load_checkpoint(path)
    del tensors[sorted(k for k in tensors if k.startswith("model.head."))[0]]
    broken = save_checkpoint(tmp_path / "broken.safetensors", tensors, header)
    with pytest.raises(CheckpointError, match="1 missing"):
        GaussianCrossModel.from_checkpoint(broken)
    # a pretraining checkpoint without its grid is refused, naming the file and the field
    gridless = save_checkpoint(tmp_path / "gridless.safetensors", load_checkpoint(path)[0],
                               header.replace(grid_size_m=None))
    with pytest.raises(CheckpointError, match="gridless.safetensors.*'grid_size_m'"):
        GaussianCrossModel.from_checkpoint(gridless)
    with pytest.raises(CheckpointError, match="does not exist"):
        GaussianCrossModel.from_checkpoint(tmp_path / "none.safetensors")


def test_bad_points_are_refused(saved):
    api = GaussianCrossModel.from_checkpoint(saved[1])
    scene = _scene()
    with pytest.raises(InputError, match="normal has shape"):
        api.gaussians(coord=scene.coord, color=scene.color, normal=scene.normal[:-1])
    with pytest.raises(InputError, match="coord"):
        api.gaussians(coord=np.zeros((0, 3)), color=np.zeros((0, 3)), normal=np.zeros((0, 3)))
    with pytest.raises(InputError, match="mask_ratio"):
        EvalInput(mask_ratio=1.0)


def test_masked_input_and_averaging(saved, one_torch_thread):
    _, path = saved
    scene = _scene()
    full = GaussianCrossModel.from_checkpoint(path, eval_input=EXACT)
    masked = GaussianCrossModel.from_checkpoint(path, eval_input=EvalInput(mask_ratio=0.5, num_masks=3))
    sets = masked.gaussian_sets(scene)
    assert len(sets) == 3
    # seeded masks: repeatable, and different from each other and from the full input
    torch.testing.assert_close(masked.gaussians(scene).means, sets[0].means)
    assert not _same(sets[0], full.gaussians(scene)) and not _same(sets[0], sets[1])
    c2w, K = _camera()
    cams = pinhole_cameras(c2w, K)
    avg = masked.render(sets, cams, 32, 24)
    each = [masked.render(s, cams, 32, 24) for s in sets]
    torch.testing.assert_close(avg.alpha, torch.stack([e.alpha for e in each]).mean(0))


def test_batchnorm_from_input_leaves_running_stats(saved, one_torch_thread):
    _, path = saved
    api = GaussianCrossModel.from_checkpoint(path, eval_input=EvalInput(mask_ratio=0.0, batchnorm="input"))
    norms = [m for m in api.model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    before = [m.running_mean.clone() for m in norms]
    g_input = api.gaussians(_scene())
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, norms))
    assert not any(m.training for m in api.model.modules())  # back in eval mode
    g_running = GaussianCrossModel.from_checkpoint(path, eval_input=EXACT).gaussians(_scene())
    assert not (len(g_input) == len(g_running) and torch.allclose(g_input.colors, g_running.colors))


def test_checkpoint_of_a_pretraining_run_renders(tmp_path, one_torch_thread):
    cfg = from_dict(PretrainConfig, {
        "name": "api", "model": MODEL,
        "data": {"synthetic": {"rooms": 1, "views": 2, "width": 32, "height": 24, "points": 2000},
                 "pipeline": {"grid_size_m": 0.1, "views_per_scene": 1, "image_size": [24, 32]}},
        "loss": {"use_sem": False}, "teachers": [],
        "train": {"epochs": 1, "batch_size": 1, "device": "cpu", "num_threads": 1}})
    _, final = run_pretraining(cfg, tmp_path / "run", progress=False, tensorboard=False)
    api = GaussianCrossModel.from_checkpoint(final)
    room = make_room(0, num_points=2000, num_views=1, width=32, height=24)
    frame = room.frames.frame(0)
    out = api.render(api.gaussians(room), pinhole_cameras(frame.cam_to_world, frame.K_depth), 32, 24)
    assert out.color.shape == (1, 24, 32, 3)
    assert float(out.alpha.mean()) > 0.3  # the room seen from one of its own cameras is mostly covered


def test_shipped_model_renders_an_unseen_room_better_than_an_untrained_one(one_torch_thread):
    assert DEMO_MODEL.stat().st_size < 5_000_000  # a few MB in the package
    trained = GaussianCrossModel.from_checkpoint(DEMO_MODEL)
    untrained = GaussianCrossModel(GaussianCross(trained.cfg))
    room = make_room(1000, num_points=20000, num_views=2, width=80, height=60)  # the rooms it saw: seeds 0-7
    frame = room.frames.frame(1)
    cams = pinhole_cameras(frame.cam_to_world, frame.K_depth)
    target = torch.from_numpy(frame.color).float() / 255.0
    depth = torch.from_numpy(frame.depth_m)
    scores = []
    for model in (trained, untrained):
        out = model.render(model.gaussians(room), cams, 80, 60)
        ok = (depth > 0) & (out.alpha[0] > 0.5)
        scores.append((float(((out.color[0] - target) ** 2).mean()),
                       float((out.expected_depth[0] - depth).abs()[ok].mean())))
    (mse_t, l1_t), (mse_u, l1_u) = scores
    assert mse_t < mse_u and l1_t < l1_u

"""Reference Gaussian renderer (gcross_core.render): analytic cases, sequential-compositing oracle,
gradients, batching, input checks and backend selection. All CPU, tiny images."""
import logging
import math

import numpy as np
import pytest
import torch

from gcross_core.render.reference import quat_to_rotmat
from gcross_core.render import RenderConfig, render
from gcross_core.render import api as render_api
from gcross_core.types import Cameras, Gaussians

F64 = torch.float64


def _gaussians(means, quats, scales, colors, opacities, features=None, batch=None, dtype=F64):
    means = torch.as_tensor(means, dtype=dtype).reshape(-1, 3)
    n = len(means)
    features = torch.zeros(n, 0, dtype=dtype) if features is None else torch.as_tensor(features, dtype=dtype)
    batch = torch.zeros(n, dtype=torch.int64) if batch is None else torch.as_tensor(batch, dtype=torch.int64)
    return Gaussians(means, torch.as_tensor(quats, dtype=dtype).reshape(n, 4),
                     torch.as_tensor(scales, dtype=dtype).reshape(n, 3),
                     torch.as_tensor(colors, dtype=dtype).reshape(n, 3),
                     torch.as_tensor(opacities, dtype=dtype).reshape(n), features, batch)


def _random_gaussians(n, seed, num_scenes=1, feature_dim=2, dtype=F64, opacity=(0.05, 0.95)):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=dtype) * torch.tensor([0.6, 0.5, 0.3], dtype=dtype)
    means[:, 2] += 2.0
    lo, hi = opacity
    return Gaussians(means=means, quats=torch.randn(n, 4, generator=g, dtype=dtype),
                     scales=0.02 + 0.15 * torch.rand(n, 3, generator=g, dtype=dtype),
                     colors=torch.rand(n, 3, generator=g, dtype=dtype),
                     opacities=lo + (hi - lo) * torch.rand(n, generator=g, dtype=dtype),
                     features=torch.randn(n, feature_dim, generator=g, dtype=dtype),
                     batch=torch.randint(0, num_scenes, (n,), generator=g))


def _cameras(K, world_to_cam=None, batch=None, n=1, dtype=F64):
    K = torch.as_tensor(K, dtype=dtype)
    world_to_cam = torch.eye(4, dtype=dtype).repeat(n, 1, 1) if world_to_cam is None else torch.as_tensor(
        world_to_cam, dtype=dtype).reshape(-1, 4, 4)
    n = len(world_to_cam)
    batch = torch.zeros(n, dtype=torch.int64) if batch is None else torch.as_tensor(batch)
    return Cameras(world_to_cam, K.expand(n, 3, 3).clone(), batch)


def _blended(out):
    return torch.cat([out.color, out.depth[..., None], out.features, out.alpha[..., None]], -1)


def _rigid(seed):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=4)
    T = np.eye(4)
    T[:3, :3] = quat_to_rotmat(torch.tensor(q / np.linalg.norm(q))).numpy()
    T[:3, 3] = rng.normal(size=3) * 0.3
    return T


# ---------------------------------------------------------------- an independent, per-pixel oracle

def _sequential_render(g: Gaussians, cams: Cameras, width, height):
    """Naive gsplat-classic rendering: every pixel walks all Gaussians of its scene front to back.

    Returns (blended channels [C, H, W, 3 + 1 + d_f + 1], number of pixels that terminated early).
    """
    out = np.zeros((len(cams), height, width, 3 + 1 + g.features.shape[1] + 1))
    terminated = 0
    q = g.quats.double().numpy()
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    for c in range(len(cams)):
        W = cams.world_to_cam[c].double().numpy()
        K = cams.K[c].double().numpy()
        # rasterizer convention (as gsplat): pixel centres at i + 0.5, so the OpenCV principal point
        # of the public API moves by half a pixel
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5
        items = []
        for i in np.flatnonzero(g.batch.numpy() == int(cams.batch[c])):
            R = quat_to_rotmat(torch.tensor(q[i])).numpy()
            S = np.diag(g.scales[i].double().numpy())
            sigma_c = W[:3, :3] @ R @ S @ S.T @ R.T @ W[:3, :3].T
            x, y, z = W[:3, :3] @ g.means[i].double().numpy() + W[:3, 3]
            if z < 0.01:
                continue
            lim_x = (cx / fx + 0.15 * width / fx, (width - cx) / fx + 0.15 * width / fx)
            lim_y = (cy / fy + 0.15 * height / fy, (height - cy) / fy + 0.15 * height / fy)
            tx = z * np.clip(x / z, -lim_x[0], lim_x[1])
            ty = z * np.clip(y / z, -lim_y[0], lim_y[1])
            J = np.array([[fx / z, 0, -fx * tx / z ** 2], [0, fy / z, -fy * ty / z ** 2]])
            sigma_2d = J @ sigma_c @ J.T + 0.3 * np.eye(2)
            value = np.concatenate([g.colors[i].double().numpy(), [z], g.features[i].double().numpy(), [1.0]])
            items.append((z, i, np.array([fx * x / z + cx, fy * y / z + cy]), np.linalg.inv(sigma_2d),
                          float(g.opacities[i]), value))
        items.sort(key=lambda it: (it[0], it[1]))
        for v in range(height):
            for u in range(width):
                T, acc = 1.0, 0.0
                for _, _, mean2d, conic, opacity, value in items:
                    d = np.array([u + 0.5, v + 0.5]) - mean2d
                    alpha = min(0.999, opacity * math.exp(-0.5 * d @ conic @ d))
                    if alpha < 1 / 255:
                        continue
                    if T * (1 - alpha) <= 1e-4:
                        terminated += 1
                        break
                    acc = acc + alpha * T * value
                    T *= 1 - alpha
                out[c, v, u] = acc
    return torch.from_numpy(out), terminated


K_SMALL = [[12.0, 0, 6.3], [0, 12.0, 4.8], [0, 0, 1]]


@pytest.mark.parametrize("tile_size,chunk_size", [(None, 32), (16, 64), (4, 3), (8, 1)])
def test_matches_sequential_compositing(tile_size, chunk_size):
    """Tiles, depth sort, chunked compositing, skipping and early termination vs a per-pixel loop."""
    g = _random_gaussians(40, seed=1, num_scenes=2)
    # opaque stacks near the optical axis, so that many pixels terminate early
    g.opacities[::2] = 0.97
    g.scales[::2] *= 3
    g.means[::2, :2] *= 0.3
    turned = np.eye(4)  # a second view of scene 0, turned by 0.2 rad about y and moved
    turned[:3, :3] = [[math.cos(0.2), 0, math.sin(0.2)], [0, 1, 0], [-math.sin(0.2), 0, math.cos(0.2)]]
    turned[:3, 3] = [0.3, -0.1, 0.2]
    world_to_cam = np.stack([np.eye(4), np.eye(4), turned])
    cams = _cameras(K_SMALL, world_to_cam, batch=[0, 1, 0])
    expected, terminated = _sequential_render(g, cams, 13, 10)
    assert terminated > 10, "too few pixels terminate early to test it"
    assert (expected[..., -1] < 0.5).any()
    out = render(g, cams, 13, 10, backend="reference", tile_size=tile_size, chunk_size=chunk_size)
    torch.testing.assert_close(_blended(out), expected, rtol=1e-9, atol=1e-10)


def test_single_gaussian_analytic():
    """Peak = opacity x colour at the projected mean; falloff exp(-0.5 d^T Sigma_2D^-1 d) (eqs. 1-3)."""
    W_h, H_h = 20, 14
    K = np.array([[18.0, 0, 9.7], [0, 16.0, 7.1], [0, 0, 1]])
    world_to_cam = _rigid(3)
    mean2d = np.array([12.0, 5.0])  # a pixel centre (OpenCV convention), off the optical axis
    z = 2.3
    mean_c = np.array([(mean2d[0] - K[0, 2]) * z / K[0, 0], (mean2d[1] - K[1, 2]) * z / K[1, 1], z])
    mean_w = world_to_cam[:3, :3].T @ (mean_c - world_to_cam[:3, 3])
    quat = np.array([0.9, 0.2, -0.3, 0.25])
    scales = np.array([0.25, 0.1, 0.05])
    color, opacity, feature = np.array([0.2, 0.7, 0.4]), 0.8, np.array([1.5, -2.0, 0.5])
    g = _gaussians(mean_w, quat, scales, color, opacity, features=feature[None])
    out = render(g, _cameras(K, world_to_cam), W_h, H_h, backend="reference")

    # eq. 2 written out independently: Sigma_2D = J W Sigma W^T J^T + 0.3 I
    R = quat_to_rotmat(torch.tensor(quat / np.linalg.norm(quat))).numpy()
    sigma_c = world_to_cam[:3, :3] @ R @ np.diag(scales ** 2) @ R.T @ world_to_cam[:3, :3].T
    J = np.array([[K[0, 0] / z, 0, -K[0, 0] * mean_c[0] / z ** 2], [0, K[1, 1] / z, -K[1, 1] * mean_c[1] / z ** 2]])
    sigma_2d = J @ sigma_c @ J.T + 0.3 * np.eye(2)
    v, u = np.mgrid[0:H_h, 0:W_h].astype(float)
    d = np.stack([u - mean2d[0], v - mean2d[1]], -1)
    alpha = opacity * np.exp(-0.5 * np.einsum("hwi,ij,hwj->hw", d, np.linalg.inv(sigma_2d), d))
    alpha = torch.from_numpy(np.where(alpha >= 1 / 255, alpha, 0.0))
    assert (alpha > 0).sum() > 20 and (alpha == 0).sum() > 20

    peak = out.color[0, 5, 12]
    torch.testing.assert_close(peak, torch.tensor(opacity * color), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.alpha[0], alpha, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.color[0], alpha[..., None] * torch.tensor(color), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.features[0], alpha[..., None] * torch.tensor(feature), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.depth[0], alpha * z, rtol=1e-10, atol=1e-12)  # eq. 14, not normalised
    expected_depth = torch.where(alpha > 0, torch.full_like(alpha, z), 0.0)
    torch.testing.assert_close(out.expected_depth[0], expected_depth, rtol=1e-10, atol=0)


def test_two_gaussians_occlude_in_depth_order():
    K = [[20.0, 0, 8.0], [0, 20.0, 8.0], [0, 0, 1]]
    red, green = [1.0, 0, 0], [0, 1.0, 0]
    # same ray through the centre of pixel (8, 8), different depths; input order must not matter
    ray = np.array([0.0, 0.0, 1.0])
    for front_first in (True, False):
        zs = [2.0, 3.0] if front_first else [3.0, 2.0]
        cols = [red, green] if front_first else [green, red]
        ops = [0.9, 0.6] if front_first else [0.6, 0.9]
        g = _gaussians(np.stack([ray * z for z in zs]), [[1, 0, 0, 0]] * 2, [[0.1] * 3] * 2, cols, ops)
        out = render(g, _cameras(K), 16, 16, backend="reference")
        a_front, a_back = ops[0] if front_first else ops[1], ops[1] if front_first else ops[0]
        expected = a_front * torch.tensor(red, dtype=F64) + (1 - a_front) * a_back * torch.tensor(green, dtype=F64)
        torch.testing.assert_close(out.color[0, 8, 8], expected)
        expected_depth = torch.tensor(a_front * 2.0 + (1 - a_front) * a_back * 3.0, dtype=F64)  # eq. 14
        torch.testing.assert_close(out.depth[0, 8, 8], expected_depth)
        assert out.color[0, 8, 8, 0] > 5 * out.color[0, 8, 8, 1]  # the front (red) one dominates


def test_behind_camera_or_outside_image_contributes_nothing():
    base = _random_gaussians(6, seed=2)
    extra = _gaussians([[0.0, 0.0, -2.0],  # behind the camera
                        [0.0, 0.0, 0.005],  # in front of the camera but closer than the near plane
                        [40.0, 0.0, 2.0],  # far to the right of the image
                        [0.0, -30.0, 2.0]],  # far above the image
                       [[1, 0, 0, 0]] * 4, [[0.3] * 3] * 4, [[1, 1, 1]] * 4, [0.9] * 4, features=np.ones((4, 2)))
    both = Gaussians(**{k: torch.cat([getattr(base, k), getattr(extra, k)]) for k in vars(base)})
    leaves = Gaussians(**{k: (v.clone().requires_grad_() if v.is_floating_point() else v)
                          for k, v in vars(both).items()})
    cams = _cameras(K_SMALL)
    out_base = render(base, cams, 13, 10, backend="reference")
    out_both = render(leaves, cams, 13, 10, backend="reference")
    assert out_base.alpha.max() > 0.3
    torch.testing.assert_close(_blended(out_both), _blended(out_base), rtol=0, atol=0)
    _blended(out_both).sum().backward()
    for name in ("means", "quats", "scales", "colors", "opacities", "features"):
        grad = getattr(leaves, name).grad
        assert torch.isfinite(grad).all(), name
        assert (grad[6:] == 0).all(), name
        assert (grad[:6] != 0).any(), name


def test_nothing_visible_gives_black_and_zero_gradients():
    g = _gaussians([[0.0, 0.0, -1.0]], [[1, 0, 0, 0]], [[0.1] * 3], [[1, 1, 1]], [0.9])
    g.means.requires_grad_()
    out = render(g, _cameras(K_SMALL), 13, 10, backend="reference")
    assert (_blended(out) == 0).all() and out.features.shape == (1, 10, 13, 0)
    (out.color.sum() + out.depth.sum()).backward()
    assert (g.means.grad == 0).all()


def test_gradcheck_float64():
    """Custom compositing backward and the projection against finite differences (eqs. 1-3, 14, 15)."""
    g = _random_gaussians(6, seed=3, opacity=(0.1, 0.8))
    cams = _cameras([[10.0, 0, 5.5], [0, 10.0, 4.5], [0, 0, 1]])

    def f(means, quats, scales, colors, opacities, features):
        gg = Gaussians(means, quats, scales, colors, opacities, features, g.batch)
        out = render(gg, cams, 11, 9, backend="reference", tile_size=4, chunk_size=2)
        return out.color, out.depth, out.features, out.alpha, out.expected_depth

    inputs = [t.clone().requires_grad_() for t in (g.means, g.quats, g.scales, g.colors, g.opacities, g.features)]
    assert (f(*inputs)[3] > 0.05).sum() > 20  # footprints over several tiles
    assert torch.autograd.gradcheck(f, inputs, fast_mode=True, atol=1e-7, rtol=1e-5)


def test_gradcheck_float64_with_early_termination():
    """Pixels that stop early (T <= 1e-4) across chunk boundaries: later Gaussians get no gradient."""
    g = _random_gaussians(8, seed=8, opacity=(0.93, 0.98))
    g.means[:, :2] *= 0.1  # a stack on the optical axis
    g.scales[:] = g.scales * 2 + 0.6  # footprints of several pixels
    cams = _cameras([[10.0, 0, 5.5], [0, 10.0, 4.5], [0, 0, 1]])
    _, terminated = _sequential_render(g, cams, 11, 9)
    assert terminated > 20

    def f(means, quats, scales, colors, opacities, features):
        gg = Gaussians(means, quats, scales, colors, opacities, features, g.batch)
        out = render(gg, cams, 11, 9, backend="reference", tile_size=4, chunk_size=2)
        return out.color, out.depth, out.features, out.alpha

    inputs = [t.clone().requires_grad_() for t in (g.means, g.quats, g.scales, g.colors, g.opacities, g.features)]
    assert torch.autograd.gradcheck(f, inputs, fast_mode=True, atol=1e-7, rtol=1e-5)


def test_batched_scenes_equal_one_by_one():
    g = _random_gaussians(24, seed=4, num_scenes=2, dtype=torch.float32)
    world_to_cam = np.stack([np.eye(4), _rigid(1), np.eye(4)])
    world_to_cam[1, :3, 3] = [0.0, 0.1, 1.5]
    cams = _cameras(K_SMALL, world_to_cam, batch=[1, 0, 0], dtype=torch.float32)
    out = render(g, cams, 13, 10, backend="reference")
    assert out.color.shape == (3, 10, 13, 3) and out.features.shape == (3, 10, 13, 2)
    for c in range(3):
        scene = g.scene(int(cams.batch[c]))
        scene.batch = torch.zeros_like(scene.batch)
        single = render(scene, Cameras(cams.world_to_cam[c:c + 1], cams.K[c:c + 1], torch.zeros(1, dtype=torch.int64)),
                        13, 10, backend="reference")
        torch.testing.assert_close(_blended(out)[c:c + 1], _blended(single), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(out.color[0], out.color[2])  # same pose, different scenes


def test_unnormalized_quaternions_are_normalized():
    g = _random_gaussians(8, seed=5)
    scaled = Gaussians(**{**vars(g), "quats": g.quats * torch.linspace(0.1, 7.0, 8, dtype=F64)[:, None]})
    cams = _cameras(K_SMALL)
    torch.testing.assert_close(_blended(render(scaled, cams, 13, 10)), _blended(render(g, cams, 13, 10)))


def _replace(g, **kw):
    return Gaussians(**{**vars(g), **kw})


def test_bad_inputs_raise_clear_errors():
    g = _random_gaussians(4, seed=6)
    cams = _cameras(K_SMALL)
    nan_means = g.means.clone()
    nan_means[1, 2] = float("nan")
    with pytest.raises(ValueError, match="means"):
        render(_replace(g, means=nan_means), cams, 13, 10)
    with pytest.raises(ValueError, match="scales"):
        render(_replace(g, scales=g.scales * torch.tensor([1.0, -1.0, 1.0], dtype=F64)), cams, 13, 10)
    with pytest.raises(ValueError, match="quats"):
        render(_replace(g, quats=torch.zeros_like(g.quats)), cams, 13, 10)
    with pytest.raises(ValueError, match="opacities"):
        render(_replace(g, opacities=g.opacities + 1.0), cams, 13, 10)
    with pytest.raises(ValueError, match="cameras.batch"):
        render(g, _cameras(K_SMALL, batch=[1]), 13, 10)
    render(g, _cameras(K_SMALL, batch=[1]), 13, 10, num_scenes=2)  # a scene without Gaussians is fine
    bad_k = _cameras(K_SMALL, n=2)
    bad_k.K = bad_k.K[:1]
    with pytest.raises(ValueError, match="K"):
        render(g, bad_k, 13, 10)
    with pytest.raises(ValueError, match="K has shape"):
        Cameras(torch.eye(4).repeat(2, 1, 1), torch.eye(3)[None], torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="width"):
        render(g, cams, 0, 10)
    with pytest.raises(ValueError, match="backend"):
        render(g, cams, 13, 10, backend="opengl")
    with pytest.raises(ValueError, match="tile_sise"):
        render(g, cams, 13, 10, tile_sise=8)
    with pytest.raises(ValueError, match="near_plane_m"):
        RenderConfig(near_plane_m=0.0)


def test_backend_selection(caplog):
    g = _random_gaussians(4, seed=7, dtype=torch.float32)
    render_api._announce_backend.cache_clear()
    with caplog.at_level(logging.INFO, logger="gcross_core.render.api"):
        out = render(g, _cameras(K_SMALL), 13, 10)  # CPU tensors -> reference
    assert "reference" in caplog.text
    assert out.color.dtype == torch.float32
    import gcross_core.render.gsplat_backend  # noqa: F401  importing works without CUDA

    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            render(g, _cameras(K_SMALL), 13, 10, backend="gsplat")

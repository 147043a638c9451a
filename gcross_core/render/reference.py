"""Differentiable Gaussian splatting in pure PyTorch (paper eqs. 1-3, 14, 15).

This is the CPU path of :func:`gcross_core.render.render` and the oracle the gsplat backend is tested
against. It follows gsplat's "classic" rasterization so that both backends agree:

1. Projection (eq. 2): world -> camera with the view matrix W, EWA splatting with the perspective
   Jacobian J (formed with camera-space x/z and y/z clamped to the image plus 30 % of the half field
   of view, as gsplat does), Sigma_2D = J W Sigma W^T J^T + eps2d * I. The dilation eps2d = 0.3 px^2 keeps sub-pixel
   Gaussians visible; there is no antialiasing compensation of the opacity. Pairs (camera, Gaussian)
   are culled when z is outside [near, far], det(Sigma_2D) <= 0, opacity < 1/255, or the bounding box
   misses the image.
2. Tile binning: the bounding box half-extent is ceil(e * sqrt(Sigma_2D diagonal)) with
   e = min(3.33, sqrt(2 ln(255 * opacity))), i.e. at most 3.33 sigma and exactly the region where
   alpha can reach 1/255. Every (tile, pair) intersection is listed and sorted by (tile, depth), ties
   by pair index. Tiles are 8 x 8 px by default (gsplat uses 16): every pixel of a tile evaluates every
   Gaussian listed for the tile and skips those below 1/255, so the tile size changes speed, not results.
3. Compositing (eqs. 3, 14, 15), front to back per pixel:
   alpha_i = min(0.999, o_i * exp(-0.5 d^T Sigma_2D^-1 d)) with d = pixel centre - mu_2D; Gaussians
   with alpha_i < 1/255 are skipped; a pixel stops before the Gaussian that would bring its
   transmittance to <= 1e-4 (that Gaussian does not contribute). Colour, depth (camera z) and features
   are blended with the same weights w_i = alpha_i prod_{j<i} (1 - alpha_j); the accumulated opacity is
   sum_i w_i = 1 - prod_i (1 - alpha_i).

Speed and memory: Gaussians are processed per tile in depth-ordered chunks, a batch of tiles at a time
laid out as [tiles, chunk, pixels of a tile]; nothing of size pixels x all Gaussians is ever built. The
exponent 0.5 d^T Sigma_2D^-1 d - ln(o) is a quadratic polynomial in the pixel coordinates, so it is
evaluated for a whole chunk with one matrix product against a fixed basis of tile-local pixel
coordinates. Compositing is a custom autograd function: the forward keeps only the transmittance
entering each chunk, and the backward recomputes each chunk and applies the closed-form gradient of
alpha blending. Early termination is a mask (exact: transmittance only decreases along a pixel's list),
and a tile leaves the loop once all its pixels have terminated.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import Tensor

from gcross_core.render.config import RenderConfig
from gcross_core.types import Cameras, Gaussians

ALPHA_MIN = 1.0 / 255.0  # alphas below this are skipped (gsplat ALPHA_THRESHOLD)
ALPHA_MAX = 0.999  # alpha clamp, keeps 1 - alpha away from 0 (gsplat classic)
T_MIN = 1e-4  # a pixel terminates before the Gaussian that would bring T to <= T_MIN
EXTENT_SIGMA = 3.33  # bounding box half-extent in standard deviations (gsplat)
FOV_CLAMP = 0.3  # J is formed with x/z, y/z clamped to the image plus 30 % of the half field of view
REFERENCE_TILE_SIZE = 8  # px; measured about 2x faster than 16 on CPU (less work outside the footprints)
_PAD_EXPONENT = 1e4  # exponent of padding slots: exp(-1e4) == 0 in float32 and float64
_CULL_SLICE = 1 << 18  # (camera, Gaussian) pairs projected at a time when culling


# ---------------------------------------------------------------- projection (eq. 2)

def quat_to_rotmat(q: Tensor) -> Tensor:
    """Unit quaternions (w, x, y, z) [..., 4] -> rotation matrices [..., 3, 3] (differentiable)."""
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(*q.shape[:-1], 3, 3)


def covariance_3d(quats: Tensor, scales: Tensor) -> Tensor:
    """Sigma = R S S^T R^T (paper Sec. 3.1) from quats [G, 4] and scales [G, 3] -> [G, 3, 3]."""
    R = quat_to_rotmat(quats)
    M = R * scales[..., None, :]
    return M @ M.transpose(-1, -2)


def camera_gaussian_pairs(gauss_batch: Tensor,  # [G] int64 scene of each Gaussian
                          cam_batch: Tensor,  # [C] int64 scene of each camera
                          ) -> Tuple[Tensor, Tensor]:
    """All (camera, Gaussian) pairs where the Gaussian belongs to the camera's scene.

    Returns (cam [M0], gauss [M0]) int64, grouped by camera, Gaussians in index order within a camera.
    """
    device = gauss_batch.device
    num_scenes = max(int(gauss_batch.max()) + 1 if len(gauss_batch) else 0,
                     int(cam_batch.max()) + 1 if len(cam_batch) else 0)
    order = torch.argsort(gauss_batch, stable=True)
    counts = torch.bincount(gauss_batch, minlength=num_scenes)
    starts = torch.cumsum(counts, 0) - counts
    per_cam = counts[cam_batch]  # [C]
    cam = torch.repeat_interleave(torch.arange(len(cam_batch), device=device), per_cam)
    first = torch.repeat_interleave(torch.cumsum(per_cam, 0) - per_cam, per_cam)
    within = torch.arange(len(cam), device=device) - first
    gauss = order[starts[cam_batch][cam] + within]
    return cam, gauss


def project_pairs(means: Tensor,  # [M, 3] world
                  covars: Tensor,  # [M, 3, 3] world
                  world_to_cam: Tensor,  # [M, 4, 4]
                  K: Tensor,  # [M, 3, 3]
                  width: int, height: int, eps2d: float) -> Tuple[Tensor, Tensor, Tensor]:
    """EWA projection (eq. 2) of one Gaussian per row into the row's camera.

    Returns (means2d [M, 2] px, covars2d [M, 2, 2] px^2 with the dilation eps2d added, depth_m [M] camera z).
    """
    R = world_to_cam[:, :3, :3]
    t = world_to_cam[:, :3, 3]
    means_c = torch.einsum("mij,mj->mi", R, means) + t  # W mu
    covars_c = R @ covars @ R.transpose(1, 2)  # W Sigma W^T
    x, y, z = means_c.unbind(-1)
    fx, fy, cx, cy = K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]
    # J of the pinhole projection; far off-screen Gaussians would get huge J, so like gsplat the
    # direction used for J is clamped to just beyond the field of view.
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    tx = z * torch.minimum(torch.maximum(x / z, -(cx / fx + FOV_CLAMP * tan_fovx)),
                           (width - cx) / fx + FOV_CLAMP * tan_fovx)
    ty = z * torch.minimum(torch.maximum(y / z, -(cy / fy + FOV_CLAMP * tan_fovy)),
                           (height - cy) / fy + FOV_CLAMP * tan_fovy)
    zero = torch.zeros_like(z)
    J = torch.stack([fx / z, zero, -fx * tx / (z * z),
                     zero, fy / z, -fy * ty / (z * z)], -1).reshape(-1, 2, 3)
    covars2d = J @ covars_c @ J.transpose(1, 2)  # eq. 2: J W Sigma W^T J^T
    covars2d = covars2d + eps2d * torch.eye(2, dtype=covars2d.dtype, device=covars2d.device)
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], -1)  # eq. 2: P W mu
    return means2d, covars2d, z


def conics_from_covars2d(covars2d: Tensor,  # [M, 2, 2]
                         ) -> Tuple[Tensor, Tensor]:
    """(conics [M, 3] = upper triangle (a, b, c) of Sigma_2D^-1, det [M])."""
    a, b, c = covars2d[:, 0, 0], 0.5 * (covars2d[:, 0, 1] + covars2d[:, 1, 0]), covars2d[:, 1, 1]
    det = a * c - b * b
    return torch.stack([c / det, -b / det, a / det], -1), det


@torch.no_grad()
def visible_radii(means2d: Tensor,  # [M, 2]
                  covars2d: Tensor,  # [M, 2, 2]
                  depth_m: Tensor,  # [M]
                  opacities: Tensor,  # [M]
                  width: int, height: int, near_plane_m: float, far_plane_m: float) -> Tensor:
    """Bounding-box half-extents [M, 2] int64 in px, zero for culled pairs (gsplat's rules)."""
    det = covars2d[:, 0, 0] * covars2d[:, 1, 1] - covars2d[:, 0, 1] * covars2d[:, 1, 0]
    ok = (depth_m >= near_plane_m) & (depth_m <= far_plane_m) & (det > 0) & (opacities >= ALPHA_MIN)
    # Beyond this extent alpha < 1/255 anyway (opacity-aware box, gsplat).
    extend = torch.sqrt(2.0 * torch.log(opacities.clamp_min(ALPHA_MIN) / ALPHA_MIN)).clamp_max(EXTENT_SIGMA)
    var = torch.stack([covars2d[:, 0, 0], covars2d[:, 1, 1]], -1).clamp_min(0)
    radii = torch.ceil(extend[:, None] * torch.sqrt(var))
    # nan/inf (degenerate) -> culled; finite but huge radii are capped before the int conversion
    radii = torch.nan_to_num(radii, nan=0.0, posinf=0.0, neginf=0.0).clamp_max(2.0 ** 30)
    ok &= (radii > 0).all(-1)
    ok &= ((means2d[:, 0] + radii[:, 0] > 0) & (means2d[:, 0] - radii[:, 0] < width)
           & (means2d[:, 1] + radii[:, 1] > 0) & (means2d[:, 1] - radii[:, 1] < height))
    ok &= torch.isfinite(means2d).all(-1)
    return torch.where(ok[:, None], radii, torch.zeros_like(radii)).long()


# ---------------------------------------------------------------- tile binning

@dataclass
class TileBins:
    """Intersections of visible pairs with tiles, sorted by (tile, depth)."""

    pair: Tensor  # [I] int64, visible pair of each intersection
    tile: Tensor  # [I] int64, global tile id (camera * tiles_per_image + ty * tiles_x + tx)
    tile_ids: Tensor  # [T] int64, global ids of the tiles with at least one intersection
    starts: Tensor  # [T] int64, first intersection of each such tile
    counts: Tensor  # [T] int64, number of intersections of each such tile


@torch.no_grad()
def bin_tiles(means2d: Tensor,  # [M, 2]
              radii: Tensor,  # [M, 2] int64, > 0
              depth_m: Tensor,  # [M]
              cam: Tensor,  # [M] int64
              tiles_x: int, tiles_y: int, tile_size: int) -> TileBins:
    device = means2d.device
    limit = torch.tensor([tiles_x, tiles_y], device=device, dtype=means2d.dtype)
    # clamped in floating point, so that far off-screen boxes cannot overflow the int conversion
    lo = torch.minimum(torch.floor((means2d - radii) / tile_size).clamp_min(0), limit).long()
    hi = torch.minimum(torch.ceil((means2d + radii) / tile_size).clamp_min(0), limit).long()  # exclusive
    span = hi - lo  # [M, 2]
    n = span[:, 0] * span[:, 1]
    pair = torch.repeat_interleave(torch.arange(len(n), device=device), n)
    local = torch.arange(len(pair), device=device) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
    nx = span[pair, 0].clamp_min(1)
    tx = lo[pair, 0] + local % nx
    ty = lo[pair, 1] + local // nx
    tile = cam[pair] * (tiles_x * tiles_y) + ty * tiles_x + tx
    # Depth rank (stable, ties by pair index) folded into one sort key with the tile id.
    rank = torch.empty_like(n)
    rank[torch.argsort(depth_m, stable=True)] = torch.arange(len(n), device=device)
    order = torch.argsort(tile * max(len(n), 1) + rank[pair])
    pair, tile = pair[order], tile[order]
    tile_ids, counts = torch.unique_consecutive(tile, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    return TileBins(pair, tile, tile_ids, starts, counts)


def tile_basis(tile_size: int, dtype: torch.dtype, device) -> Tensor:
    """[P, 6] monomials (1, u, v, u^2, v^2, u v) of the tile-local pixel centres, P = tile_size^2.

    (u, v) are measured from the tile centre, which keeps the polynomial coefficients small.
    """
    r = torch.arange(tile_size, dtype=dtype, device=device) + 0.5 - 0.5 * tile_size
    v, u = torch.meshgrid(r, r, indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    return torch.stack([torch.ones_like(u), u, v, u * u, v * v, u * v], -1)


def exponent_coefficients(means2d: Tensor,  # [I, 2] px
                          conics: Tensor,  # [I, 3]
                          opacities: Tensor,  # [I]
                          tile_centre: Tensor,  # [I, 2] px
                          ) -> Tensor:
    """Coefficients [I, 6] of s(u, v) = 0.5 d^T Sigma_2D^-1 d - ln(o) over the tile_basis monomials.

    d = (a - u, b - v) with (a, b) the mean relative to the tile centre, so that
    alpha = min(0.999, exp(-s)) = min(0.999, o * exp(-0.5 d^T Sigma_2D^-1 d))  (eq. 1 in 2D).
    """
    a, b = (means2d - tile_centre).unbind(-1)
    ca, cb, cc = conics.unbind(-1)
    const = 0.5 * ca * a * a + cb * a * b + 0.5 * cc * b * b - torch.log(opacities)
    return torch.stack([const, -(ca * a + cb * b), -(cb * a + cc * b), 0.5 * ca, 0.5 * cc, cb], -1)


# ---------------------------------------------------------------- compositing (eqs. 3, 14, 15)

def _chunk_weights(coef: Tensor,  # [B, K, 6]
                   basis_t: Tensor,  # [6, P]
                   t_in: Tensor,  # [B, P] transmittance entering the chunk (termination bookkeeping)
                   ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Blending weights of one chunk, front to back along K.

    Returns (weights [B, K, P], alpha [B, K, P], t_before [B, K, P], t_out [B, P]). ``t_out`` and
    ``t_before`` include the factor of the Gaussian that terminated a pixel, so t <= T_MIN marks a
    terminated pixel for all later Gaussians; where a Gaussian contributes, t_before is its exact
    transmittance prod_{j<i} (1 - alpha_j).
    """
    b, k, _ = coef.shape
    alpha = (coef.reshape(b * k, 6) @ basis_t).view(b, k, basis_t.shape[1])
    alpha = alpha.neg_().exp_().clamp_max_(ALPHA_MAX)
    alpha.masked_fill_(alpha < ALPHA_MIN, 0.0)
    t_after = torch.cumprod(1.0 - alpha, dim=1).mul_(t_in[:, None, :])
    t_before = torch.cat([t_in[:, None, :], t_after[:, :-1]], 1)
    weights = (alpha * t_before).masked_fill_(t_after <= T_MIN, 0.0)  # eq. 3: alpha_i prod (1 - alpha_j)
    return weights, alpha, t_before, t_after[:, -1]


class _Composite(torch.autograd.Function):
    """Alpha compositing of depth-sorted Gaussians per tile, with a recomputing backward."""

    @staticmethod
    def forward(ctx, coef, values, pair, bins, pixel_inside, n_tiles, basis, cfg):
        # coef [I, 6], values [M, D], pair [I], pixel_inside [T, P] bool
        P, D = basis.shape[0], values.shape[1]
        coef_pad = torch.cat([coef, coef.new_tensor([[_PAD_EXPONENT, 0, 0, 0, 0, 0]])])
        values_pad = torch.cat([values, values.new_zeros(1, D)])
        pair_pad = torch.cat([pair, pair.new_tensor([len(values)])])
        basis_t = basis.t().contiguous()
        acc = values.new_zeros(len(bins.tile_ids), P, D)
        t_state = pixel_inside.to(values.dtype)  # pixels outside the image count as terminated
        schedule: List[Tuple[Tensor, Tensor, Tensor]] = []
        max_count = int(bins.counts.max()) if len(bins.counts) else 0
        K = cfg.chunk_size
        tiles_per_step = max(1, cfg.batch_elements // (K * P))
        slot = torch.arange(K, device=values.device)
        for k0 in range(0, max_count, K):
            active = torch.nonzero((bins.counts > k0) & (t_state > T_MIN).any(1)).squeeze(1)
            if len(active) == 0:
                break
            for tiles in active.split(tiles_per_step):
                pos = k0 + slot[None, :]
                idx = torch.where(pos < bins.counts[tiles, None], bins.starts[tiles, None] + pos, len(coef))
                t_in = t_state[tiles]
                weights, _, _, t_out = _chunk_weights(coef_pad[idx], basis_t, t_in)
                acc[tiles] += torch.bmm(weights.transpose(1, 2), values_pad[pair_pad[idx]])
                t_state[tiles] = t_out
                schedule.append((tiles, idx, t_in))
        out = values.new_zeros(n_tiles, P, D)
        out[bins.tile_ids] = acc
        ctx.save_for_backward(coef_pad, values_pad, pair_pad, out)
        ctx.schedule, ctx.bins, ctx.basis = schedule, bins, basis
        ctx.num_isect, ctx.num_values = len(coef), len(values)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        # grad_out [n_tiles, P, D]
        coef_pad, values_pad, pair_pad, out = ctx.saved_tensors
        bins, basis = ctx.bins, ctx.basis
        basis_t = basis.t().contiguous()
        grad_tiles = grad_out[bins.tile_ids]  # [T, P, D]
        # sum_i w_i (c_i . g) over a pixel's whole list, from the forward output
        total = (out[bins.tile_ids] * grad_tiles).sum(-1)  # [T, P]
        prefix = torch.zeros_like(total)
        grad_coef = torch.zeros_like(coef_pad)
        grad_values = torch.zeros_like(values_pad)
        for tiles, idx, t_in in ctx.schedule:
            vals = values_pad[pair_pad[idx]]  # [B, K, D]
            weights, alpha, t_before, _ = _chunk_weights(coef_pad[idx], basis_t, t_in)
            g = grad_tiles[tiles]  # [B, P, D]
            grad_values.index_add_(0, pair_pad[idx].reshape(-1),
                                   torch.bmm(weights, g).reshape(-1, g.shape[-1]))
            cg = torch.bmm(vals, g.transpose(1, 2))  # [B, K, P] c_i . g_p
            suffix = torch.cumsum(weights * cg, dim=1).add_(prefix[tiles, None, :])
            prefix[tiles] = suffix[:, -1]
            suffix = total[tiles, None, :] - suffix  # sum_{j>i} w_j c_j . g
            # d out / d alpha_i = T_i c_i - sum_{j>i} w_j c_j / (1 - alpha_i)
            grad_alpha = t_before * cg - suffix / (1.0 - alpha)
            # alpha = exp(-s) where it is neither clamped, skipped nor terminated
            live = (weights > 0) & (alpha < ALPHA_MAX)
            grad_s = grad_alpha.mul_(alpha).masked_fill_(~live, 0.0).neg_()
            b, k, _ = grad_s.shape
            grad_coef.index_add_(0, idx.reshape(-1), (grad_s.reshape(b * k, -1) @ basis).reshape(b * k, 6))
        return (grad_coef[:ctx.num_isect], grad_values[:ctx.num_values],
                None, None, None, None, None, None)


# ---------------------------------------------------------------- entry point

def tiles_to_image(tiles: Tensor,  # [C * tiles_y * tiles_x, S * S, D]
                   num_cameras: int, tiles_x: int, tiles_y: int, tile_size: int,
                   width: int, height: int) -> Tensor:
    """Tile layout -> images [C, H, W, D]."""
    s, d = tile_size, tiles.shape[-1]
    img = tiles.reshape(num_cameras, tiles_y, tiles_x, s, s, d).permute(0, 1, 3, 2, 4, 5)
    return img.reshape(num_cameras, tiles_y * s, tiles_x * s, d)[:, :height, :width]


def render_reference(gaussians: Gaussians, cameras: Cameras, width: int, height: int,
                     cfg: RenderConfig = RenderConfig()) -> Tensor:
    """Render every camera from the Gaussians of its scene.

    Inputs are assumed validated (see :func:`gcross_core.render.render`); quaternions must be unit.
    Returns the blended channels [C, H, W, 3 + 1 + d_f + 1]: colour (eq. 3), camera z (eq. 14),
    features (eq. 15) and accumulated opacity.
    """
    g = gaussians
    dtype, device = g.means.dtype, g.means.device
    num_cams = len(cameras)
    world_to_cam = cameras.world_to_cam.to(dtype)
    K = cameras.K.to(dtype)
    ts = cfg.tile_size or REFERENCE_TILE_SIZE
    tiles_x, tiles_y = math.ceil(width / ts), math.ceil(height / ts)

    cam, gid = camera_gaussian_pairs(g.batch, cameras.batch)
    covars = covariance_3d(g.quats, g.scales)  # Sigma = R S S^T R^T (Sec. 3.1)
    with torch.no_grad():  # culling, in slices so that many views of large scenes stay bounded
        radii = torch.cat([visible_radii(*project_pairs(g.means[gs], covars[gs], world_to_cam[cs], K[cs],
                                                         width, height, cfg.eps2d),
                                         g.opacities[gs], width, height, cfg.near_plane_m, cfg.far_plane_m)
                           for cs, gs in zip(cam.split(_CULL_SLICE), gid.split(_CULL_SLICE))]
                          or [cam.new_zeros(0, 2)])
        keep = (radii > 0).all(-1)
    cam, gid, radii = cam[keep], gid[keep], radii[keep]
    # Differentiable pass on the visible pairs only (culled pairs may have z <= 0, whose gradients
    # would be inf * 0).
    means2d, covars2d, depth = project_pairs(g.means[gid], covars[gid], world_to_cam[cam], K[cam],
                                             width, height, cfg.eps2d)
    conics, _ = conics_from_covars2d(covars2d)

    bins = bin_tiles(means2d.detach(), radii, depth.detach(), cam, tiles_x, tiles_y, ts)
    local = bins.tile % (tiles_x * tiles_y)
    tile_centre = torch.stack([local % tiles_x, local // tiles_x], -1).to(dtype) * ts + 0.5 * ts
    coef = exponent_coefficients(means2d[bins.pair], conics[bins.pair], g.opacities[gid][bins.pair],
                                 tile_centre)
    ones = torch.ones_like(depth)[:, None]
    values = torch.cat([g.colors[gid], depth[:, None], g.features[gid], ones], 1)  # [M, D]

    basis = tile_basis(ts, dtype, device)
    t_local = bins.tile_ids % (tiles_x * tiles_y)
    px = (t_local % tiles_x)[:, None] * ts + (torch.arange(ts * ts, device=device) % ts)[None]
    py = (t_local // tiles_x)[:, None] * ts + (torch.arange(ts * ts, device=device) // ts)[None]
    pixel_inside = (px < width) & (py < height)  # [T, P]
    out = _Composite.apply(coef, values, bins.pair, bins, pixel_inside, num_cams * tiles_x * tiles_y,
                           basis, cfg)
    return tiles_to_image(out, num_cams, tiles_x, tiles_y, ts, width, height)

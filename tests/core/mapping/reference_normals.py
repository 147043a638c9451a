"""The plain NumPy normal estimate the map's compiled kernel (gcross_core.mapping.fusion_kernels) must match:
the tests' reference, kept apart from the library so that the library has one implementation."""
import numpy as np

from gcross_core.image import check_intrinsics


def pixel_normals(depth_m: np.ndarray,  # [H, W] float32 metres; <= 0 or non-finite is invalid
                  K: np.ndarray,  # [3, 3]
                  pixels: np.ndarray,  # [N] int64 flat pixel indices (v * W + u)
                  baseline_px=1,  # int or [N] int: half-width k of the central differences, pixels
                  max_jump: float = 0.05,
                  ) -> np.ndarray:
    """Camera-frame unit normals [N, 3] float32 at the given pixels, oriented toward the camera.

    n = (P(v+k, u) - P(v-k, u)) x (P(v, u+k) - P(v, u-k)) with P the back-projected point: the cross
    product of the image-space gradients, in the order that faces the camera for every surface it sees
    (the sign is still checked against the viewing ray). A normal is zero when a sample falls outside the
    image or is invalid, or when a second difference z(+k) - 2 z(0) + z(-k) exceeds ``max_jump`` times the
    depth: a step (occlusion edge) in the window, where the differences would join two surfaces. On a
    slanted plane the second difference stays far below that even at grazing angles.
    """
    if depth_m.ndim != 2:
        raise ValueError(f"depth_m has shape {depth_m.shape}, expected [H, W]")
    h, w = depth_m.shape
    pixels = np.asarray(pixels, dtype=np.int64)
    if pixels.ndim != 1:
        raise ValueError(f"pixels has shape {pixels.shape}, expected [N] flat pixel indices")
    out = np.zeros((len(pixels), 3), dtype=np.float32)
    if len(pixels) == 0:
        return out
    if pixels.min() < 0 or pixels.max() >= h * w:
        raise ValueError(f"pixels outside [0, {h * w}) for a {w}x{h} depth image")
    k = np.broadcast_to(np.asarray(baseline_px, dtype=np.int64), pixels.shape)
    v, u = np.divmod(pixels, w)
    inside = (u >= k) & (u < w - k) & (v >= k) & (v < h - k)
    k = np.where(inside, k, 0)  # rows outside the image are rejected below; k = 0 keeps their reads inside
    flat = depth_m.reshape(-1)
    kw = k * w
    zc, zl, zr, zu, zd = flat[pixels], flat[pixels - k], flat[pixels + k], flat[pixels - kw], flat[pixels + kw]
    fx, fy, cx, cy = (np.float32(K[0, 0]), np.float32(K[1, 1]), np.float32(K[0, 2]), np.float32(K[1, 2]))
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        # All five samples valid: the smallest is > 0 and their sum is finite (NaN, inf fail either test).
        ok = inside & (np.minimum(np.minimum(zc, zl), np.minimum(np.minimum(zr, zu), zd)) > 0)
        ok &= np.isfinite(zc + zl + zr + zu + zd)
        lim = np.float32(max_jump) * zc
        ok &= (np.abs(zr - 2 * zc + zl) <= lim) & (np.abs(zd - 2 * zc + zu) <= lim)
        xc = (u.astype(np.float32) - cx) / fx  # x / z of the centre pixel
        yc = (v.astype(np.float32) - cy) / fy
        kx, ky = k.astype(np.float32) / fx, k.astype(np.float32) / fy
        # a = P(u+k) - P(u-k), b = P(v+k) - P(v-k) with P = z * (x/z, y/z, 1).
        az = zr - zl
        ax = (xc + kx) * zr - (xc - kx) * zl
        ay = yc * az
        bz = zd - zu
        bx = xc * bz
        by = (yc + ky) * zd - (yc - ky) * zu
        nx = by * az - bz * ay
        ny = bz * ax - bx * az
        nz = bx * ay - by * ax
        norm = np.sqrt(nx * nx + ny * ny + nz * nz)
        ok &= norm > 0
        # Toward the camera: n . P < 0 with P = zc * (xc, yc, 1).
        scale = np.copysign(np.float32(1), -(nx * xc + ny * yc + nz)) / norm
    rows = np.flatnonzero(ok)
    s = scale[rows]
    out[rows, 0] = nx[rows] * s
    out[rows, 1] = ny[rows] * s
    out[rows, 2] = nz[rows] * s
    return out


def depth_normals(depth_m: np.ndarray,  # [H, W] float32 metres
                  K: np.ndarray,  # [3, 3]
                  baseline_px: int = 1,
                  max_jump: float = 0.05,
                  ) -> np.ndarray:
    """Camera-frame unit normals of every pixel, [H, W, 3] float32 (see ``pixel_normals``)."""
    depth_m = np.asarray(depth_m, dtype=np.float32)
    if depth_m.ndim != 2:
        raise ValueError(f"depth_m has shape {depth_m.shape}, expected [H, W]")
    K = check_intrinsics(K)
    h, w = depth_m.shape
    return pixel_normals(depth_m, K, np.arange(h * w), baseline_px, max_jump).reshape(h, w, 3)

"""Packed voxel keys: three signed integer voxel coordinates in one non-negative int64 (numba-free, so that
the map's key helpers import without the compiled kernels)."""

KEY_BITS = 21  # bits per axis in a packed voxel key: 3 * 21 = 63 bits fit a non-negative int64
KEY_OFFSET = 1 << (KEY_BITS - 1)  # voxel coordinates in [-2^20, 2^20): +-21 km at 2 cm voxels
KEY_MASK = (1 << KEY_BITS) - 1

"""Class tables: sizes, uniqueness, and the raw-id -> class-index maps."""
import numpy as np

from gcross_core.data import classes as C


def test_tables_have_the_benchmark_sizes_and_unique_entries():
    assert len(C.SCANNET20_CLASSES) == 20 == len(set(C.SCANNET20_CLASSES)) == len(C.SCANNET20_NYU40_IDS)
    assert len(C.SCANNET200_CLASSES) == 200 == len(set(C.SCANNET200_CLASSES))
    assert len(C.SCANNET200_IDS) == 200 == len(set(C.SCANNET200_IDS))
    assert list(C.SCANNET200_IDS) == sorted(C.SCANNET200_IDS)
    assert C.SCANNET20_CLASSES[0] == "wall" and C.SCANNET20_CLASSES[-1] == "otherfurniture"
    assert set(C.SYNTHETIC_CLASSES) <= set(C.SCANNET20_CLASSES)


def test_id_maps_send_listed_ids_to_their_index_and_everything_else_to_ignore():
    nyu = np.array([1, 5, 39, 13, 0, 40, -1])
    np.testing.assert_array_equal(C.nyu40_to_scannet20(nyu), [C.SCANNET20_CLASSES.index(n) for n in
                                                              ("wall", "chair", "otherfurniture")] + [-1] * 4)
    sid = np.array([C.SCANNET200_IDS[7], 12, 5000, C.SCANNET200_IDS[-1]])
    np.testing.assert_array_equal(C.scannet_id_to_scannet200(sid), [7, -1, -1, 199])
    names = [C.SYNTHETIC_CLASSES[i] for i in range(len(C.SYNTHETIC_CLASSES))]
    assert [C.SCANNET20_CLASSES[j] for j in C.SYNTHETIC_TO_SCANNET20] == names

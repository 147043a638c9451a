"""Scene data: scene folders (Pointcept layout + SensReader frames), ScanNet readers, synthetic rooms,
augmentation that keeps cameras aligned."""
from gcross_core.data import classes
from gcross_core.data.classes import SCANNET20_CLASSES, SCANNET200_CLASSES, SYNTHETIC_CLASSES
from gcross_core.data.grid import collate_points, grid_sample, split_by_offset
from gcross_core.data.frames import Frame, FrameList, FrameSet, SensReaderFrames, write_frames
from gcross_core.data.scene import Scene, load_scene, write_scene
from gcross_core.data.synthetic import RoomConfig, make_room
from gcross_core.data.transforms import AugmentConfig, Augmentation, sample_augmentation

__all__ = [
    "classes", "SCANNET20_CLASSES", "SCANNET200_CLASSES", "SYNTHETIC_CLASSES",
    "collate_points", "grid_sample", "split_by_offset",
    "Frame", "FrameList", "FrameSet", "Scene", "SensReaderFrames", "load_scene",
    "write_frames", "write_scene", "RoomConfig", "make_room", "AugmentConfig", "Augmentation",
    "sample_augmentation",
]

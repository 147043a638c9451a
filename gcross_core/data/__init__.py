"""Scene data: scene folders (Pointcept layout + SensReader frames), ScanNet readers, synthetic rooms,
augmentation that keeps cameras aligned, and pretraining batches."""
from . import classes
from .classes import SCANNET20_CLASSES, SCANNET200_CLASSES, SYNTHETIC_CLASSES
from .dataset import (PretrainBatch, PretrainDataConfig, PretrainDataset, PretrainSample, TeacherCacheSpec,
                      collate_pretrain, pretrain_loader)
from .grid import collate_points, grid_sample, split_by_offset
from .scene import (Frame, FrameList, FrameSet, Scene, SensReaderFrames, fuse_frames_to_points, load_scene,
                    write_frames, write_scene)
from .synthetic import RoomConfig, make_room
from .transforms import AugmentConfig, Augmentation, sample_augmentation

__all__ = [
    "classes", "SCANNET20_CLASSES", "SCANNET200_CLASSES", "SYNTHETIC_CLASSES",
    "PretrainBatch", "PretrainDataConfig", "PretrainDataset", "PretrainSample", "TeacherCacheSpec",
    "collate_pretrain", "pretrain_loader", "collate_points", "grid_sample", "split_by_offset",
    "Frame", "FrameList", "FrameSet", "Scene", "SensReaderFrames", "fuse_frames_to_points", "load_scene",
    "write_frames", "write_scene", "RoomConfig", "make_room", "AugmentConfig", "Augmentation",
    "sample_augmentation",
]

"""Foreign weights in: Pointcept ``.pth`` files (SpUNet backbones, segmentors, PointGroup) read without
unpickling code and converted into gcross checkpoints."""

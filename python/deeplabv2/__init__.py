"""A thin DeepLabV2 (ResNet-101, output stride 8, ASPP, multi-scale inputs) on deeplabv2_ext.

Subpackages: `models` (network, MSC, weight loading, preprocessing), `data` (PASCAL VOC,
Cityscapes, synthetic shapes, augmentation), `train` (SGD + poly, checkpoints, DDP), `evaluate`
(mIoU, multi-scale, DenseCRF), `cli` (the `deeplabv2` command).
"""

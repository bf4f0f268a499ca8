"""Datasets of the SqueezeNAS pipeline (Sec. 5.3.2): Cityscapes, folder-format (a user's own task), COCO and
ImageNet readers, transforms, generators."""
from nas_core.data.cityscapes import CityscapesSegmentation
from nas_core.data.coco import CocoSegmentation
from nas_core.data.files import DatasetError
from nas_core.data.folder import FolderSegmentation, SegmentationClasses
from nas_core.data.generate import generate_cityscapes, generate_coco, generate_folder, generate_imagenet
from nas_core.data.imagenet import ClassificationEvalTransform, ClassificationTrainTransform, ImageNetFolder
from nas_core.data.transforms import EvalTransform, TrainTransform

__all__ = [
    "CityscapesSegmentation", "ClassificationEvalTransform", "ClassificationTrainTransform", "CocoSegmentation",
    "DatasetError", "EvalTransform", "FolderSegmentation", "ImageNetFolder", "SegmentationClasses", "TrainTransform",
    "generate_cityscapes", "generate_coco", "generate_folder", "generate_imagenet",
]

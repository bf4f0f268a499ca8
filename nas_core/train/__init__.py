"""The retraining of the chosen network (paper section 5.3.2): ImageNet, COCO, Cityscapes coarse, fine."""

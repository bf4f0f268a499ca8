"""The training machine shared by the search and the retraining: process groups and DDP, mixed precision,
seeding, checkpoints, the retraining loop, its schedules, the evaluation and the mIoU metric."""

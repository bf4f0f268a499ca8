"""The training machine shared by the search and the retraining: the train loop, its schedules, the
evaluation and the mIoU metric."""

"""Step *tune*: Ray Tune over COMBO's loss weights and the learning rate, ASHA on val mIoU; each trial a Ray Train run."""

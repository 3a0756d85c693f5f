"""Loaders: `build_loader(cfg, split, dist)` over folder, wds or dali backends.

Contract every backend honours (see pipeline/data/transforms.py for the augmentation):
  * iterating yields `(images, labels)`: images uint8 [N, 3, H, W] (channels_last memory
    format when cfg.train.channels_last) on `dist.device`, labels int64 [N] on the same device;
  * `len(loader)` is the number of batches this rank yields in the current epoch, from the
    batch set by `set_epoch(epoch, start_batch)` on;
  * `loader.classes` are WNIDs in class-index (sorted) order; `loader.num_samples` is the size
    of the whole split (all ranks);
  * train: every rank yields the same number of batches (checked with an all-reduce);
    val: every sample is visited exactly once across ranks (batch counts may differ).
"""

"""A small Vision Transformer (4x4 patches, 6 blocks of width 192, 3 heads) on an imported image folder.

Import a folder of class subfolders (DIR/cat/*.png, DIR/dog/*.png, ...) once, as 32x32 images:

    pipeline data import DIR --name images --image-size 32,32

then `pipeline train images_vit`. 64 patch tokens and a class token; AdamW at 1e-3 (weight decay
0.05, clipping at 1) with warmup and cosine decay over 50 epochs of batch 128, flips and padded
crops: ViTs need more augmentation and epochs than ResNets on small datasets.
"""

from pipeline.config import Config, DataConfig, OptimizerConfig
from pipeline.models import ViTConfig


def config() -> Config:
    return Config(
        data=DataConfig(name="images", augment="flip,crop:4"),
        epochs=50,
        batch_size=128,
        eval_every=1000,
        model=ViTConfig(patch=4, dim=192, depth=6, heads=3, pool="cls", dropout=0.0),
        optimizer=OptimizerConfig(name="adamw", learning_rate=1e-3, weight_decay=0.05, clip_norm=1.0,
                                  schedule="warmup_cosine", warmup_steps=500),
    )

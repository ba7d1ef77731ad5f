"""ResNet-20 (CIFAR layout, 0.27M parameters) on an imported image folder, with flips and padded crops.

Import a folder of class subfolders (DIR/cat/*.png, DIR/dog/*.png, ...) once, as 32x32 images:

    pipeline data import DIR --name images --image-size 32,32

then `pipeline train images_resnet`. `model.depth=56` is ResNet-56; `model.depth=18` the CIFAR
ResNet-18 (11M parameters). SGD with Nesterov momentum 0.9 at 0.1, weight decay 5e-4 and a cosine
schedule over 30 epochs of batch 128 (epochs follow the dataset's size).
"""

from pipeline.config import Config, DataConfig, OptimizerConfig
from pipeline.models import ResNetConfig


def config() -> Config:
    return Config(
        data=DataConfig(name="images", augment="flip,crop:4"),
        epochs=30,
        batch_size=128,
        eval_every=1000,
        model=ResNetConfig(depth=20),
        optimizer=OptimizerConfig(name="nesterov", learning_rate=0.1, momentum=0.9, weight_decay=5e-4,
                                  schedule="warmup_cosine", warmup_steps=200),
    )

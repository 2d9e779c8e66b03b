"""Configs for DifNet and Sim-DeepLab on Pascal VOC 2012 (SBD-augmented) and synthetic_shapes.

Use as `--config=experiments/configs/voc.py:ARG`, ARG = VARIANT[,MODIFIER...]:
  VARIANT   difnet18 | difnet34 | difnet50 | difnet101 | difnet50_noaspp | difnet50_no24
            simdeeplab18 | simdeeplab34 | simdeeplab50 | simdeeplab101
  MODIFIER  synthetic   the embedded synthetic_shapes dataset, sized for a 2-core CPU
            imagenet    fine-tune from torchvision's ImageNet ResNet, read from weights/resnet{depth}.npz
                        (written by experiments.convert_weights, README "Pretrained backbones"; any
                        other file: --config.model.backbone_init=FILE); lr 2.5e-3 x1 on the backbones,
                        x10 on the new layers, no weight decay on BatchNorm, biases and mu/beta, 30 epochs

Defaults are the paper's (Sec. 5.1, trained from scratch): batch 16, crop 321, SGD lr
2.5e-3 with poly decay 0.9, momentum 0.9, weight decay 5e-4, 200 epochs of the 10,582
train images.
"""

from __future__ import annotations

import ml_collections

DEPTHS = (18, 34, 50, 101)
VOC_TRAIN_IMAGES = 10_582
VARIANTS = tuple(f"difnet{d}" for d in DEPTHS) + ("difnet50_noaspp", "difnet50_no24") + tuple(
    f"simdeeplab{d}" for d in DEPTHS
)
MODIFIERS = ("synthetic", "imagenet")


def get_config(arg: str = "difnet50") -> ml_collections.ConfigDict:
    tokens = [t.strip() for t in arg.split(",") if t.strip()]
    if not tokens or tokens[0] not in VARIANTS:
        raise ValueError(f"config arg {arg!r}: the first item must be one of {', '.join(VARIANTS)}")
    unknown = [t for t in tokens[1:] if t not in MODIFIERS]
    if unknown:
        raise ValueError(f"config arg {arg!r}: unknown modifier(s) {unknown}; known: {', '.join(MODIFIERS)}")
    variant = tokens[0]

    config = ml_collections.ConfigDict()
    config.arg = arg

    config.model = model = ml_collections.ConfigDict()
    model.name = "simdeeplab" if variant.startswith("simdeeplab") else "difnet"
    model.depth = int(variant.removeprefix("simdeeplab").removeprefix("difnet").split("_")[0])
    model.width = 64  # channels of the ResNet stem and layer1; 64 is the paper's ResNet
    model.aspp = not variant.endswith("_noaspp")  # DifNet only; Sim-DeepLab always has ASPP
    model.aspp_rates = (6, 12, 18, 24)
    model.walks = (1, 3, 5) if variant.endswith("_no24") else (1, 2, 3, 4, 5)  # taps: image, layer1..4
    model.psi_channels = 64
    model.diffusion_backend = "auto"  # dense | chunked | fused | auto (fastest that fits; see README)
    model.dtype = "float32"  # compute dtype; parameters stay float32
    model.backbone_init = ""  # torchvision ResNet weights (.pth/.pt/.safetensors/.npz); "" = from scratch
    model.backbone_init_branches = "both"  # DifNet: both | seed | similarity (backbones backbone_init initialises)
    model.verify_backbone_init = True  # compare the imported ResNet with a reference forward pass at start
    model.frozen_backbone_bn = False  # pretrained backbones: BatchNorm statistics and affine parameters fixed

    config.data = data = ml_collections.ConfigDict()
    data.name = "voc_aug"
    data.data_dir = ""  # TFDS data_dir; "" = TFDS's default (~/tensorflow_datasets)
    data.manual_dir = ""  # where the downloaded archives are (real datasets only)
    data.eval_split = "validation"
    data.crop_size = 321
    data.eval_size = 505
    data.scale_range = (0.5, 1.5)
    data.num_workers = 0  # grain worker processes for decoding and augmentation

    config.train = train = ml_collections.ConfigDict()
    train.batch_size = 16  # global, over all devices and hosts
    train.eval_batch_size = 8
    train.num_steps = 200 * VOC_TRAIN_IMAGES // 16
    train.optimizer = "sgd"  # or "adamw"
    train.lr = 2.5e-3
    train.lr_power = 0.9
    train.momentum = 0.9
    train.weight_decay = 5e-4
    train.weight_decay_on = "all"  # all | kernels (no decay on BatchNorm, biases and the mu/beta logits)
    train.pretrained_lr_scale = 1.0  # lr multiplier of the backbones initialised from model.backbone_init
    train.new_lr_scale = 1.0  # lr multiplier of every other parameter
    train.seed = 0
    train.log_every = 50
    train.eval_every = 5000
    train.checkpoint_every = 5000
    train.keep_checkpoints = 3
    train.skip_nonfinite = False  # True: skip steps with a non-finite loss/gradient instead of stopping

    if "synthetic" in tokens:  # about 7 minutes of training on 2 CPU cores
        data.name = "synthetic_shapes"
        data.crop_size = 81  # seed grid 11x11
        data.eval_size = 97  # 96x96 scenes padded: grid 13x13
        data.scale_range = (0.75, 1.25)
        model.width = 16
        model.aspp_rates = (1, 2, 3, 4)  # the paper's rates scaled to an 11x11 grid
        train.optimizer = "adamw"  # SGD needs far more than 1,000 steps from scratch
        train.lr = 1.5e-3
        train.num_steps = 1000
        train.eval_batch_size = 20
        train.log_every = 50
        train.eval_every = 250
        train.checkpoint_every = 250
    if "imagenet" in tokens:  # DeepLab-style fine-tuning; a starting point, not tuned on VOC here
        model.backbone_init = f"weights/resnet{model.depth}.npz"
        train.weight_decay_on = "kernels"
        train.new_lr_scale = 10.0
        if "synthetic" not in tokens:
            train.num_steps = 30 * VOC_TRAIN_IMAGES // 16
            train.eval_every = train.checkpoint_every = 2000
    return config

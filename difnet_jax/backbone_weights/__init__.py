"""Backbone weights: reading them, importing them into the Flax ResNets, checking them, making the synthetic ones.

- `files`: named tensors from `.pth` (without PyTorch, refusing anything but a state dict), `.safetensors`
  and `.npz` files, as numpy arrays; the portable `.npz` writer.
- `loading`: torchvision-layout ImageNet ResNets -> the Flax `ResNet` and the families' backbones
  (`config.model.backbone_init`), every name and shape checked, the features compared with `reference`.
- `reference`: a numpy forward pass of a torchvision-layout state dict, written apart from the Flax modules.
- `pretraining`: the synthetic protocol's "ImageNet": a ResNet classifier pretrained on `synthetic_classes`
  (the `pretrained` modifier; `python -m experiments.pretrain`).
"""

"""Guards the torch/torchvision trap of this machine: a CPU-only torch 2.13.0 wheel in /opt/wheels
with the PyPI torchvision fails at import ("operator torchvision::nms does not exist")."""

import torch
import torchvision


def test_torchvision_imports_and_builds_a_model():
    model = torchvision.models.resnet18(num_classes=3)
    out = model(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 3)
    # nms is the operator that goes missing when torch and torchvision builds do not match
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5)
    assert keep.tolist() == [0]

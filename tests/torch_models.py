"""PyTorch reference networks for the converter tests, written from the published
definitions: RobustBench's ``PreActResNet``, ``WideResNet`` and ``DMWideResNet`` (Gowal
et al. 2020) and torchvision's ``resnet50``. Attribute names, and hence state-dict keys,
are the published ones; every size is a constructor argument so tests can run small
networks through the same code. Inputs are NCHW in [0, 1]; normalisation, where the
reference has it, is inside the forward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


class Normalised(nn.Module):
    """``(x - mean) / std`` before ``net``, with mean and std outside the state dict."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mu", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("sigma", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        return self.net((x - self.mu) / self.sigma)


# --- RobustBench PreActResNet ----------------------------------------------------------


class PreActBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1, out_shortcut=False):
        super().__init__()
        self.out_shortcut = out_shortcut
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        if hasattr(self, "shortcut"):
            shortcut = self.shortcut(out if self.out_shortcut else x)
        else:
            shortcut = x
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class PreActResNet(nn.Module):
    def __init__(
        self,
        widths=(64, 128, 256, 512),
        blocks=(2, 2, 2, 2),
        num_classes=10,
        bn_before_fc=False,
        out_shortcut=False,
    ):
        super().__init__()
        self.bn_before_fc = bn_before_fc
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        in_planes = widths[0]
        for i, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            layers = []
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(PreActBlock(in_planes, width, stride, out_shortcut))
                in_planes = width
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.num_stages = len(widths)
        if bn_before_fc:
            self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = self.conv1(x)
        for i in range(self.num_stages):
            out = getattr(self, f"layer{i + 1}")(out)
        if self.bn_before_fc:
            out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


# --- RobustBench WideResNet (Zagoruyko & Komodakis layout) ----------------------------


class WideBasicBlock(nn.Module):
    def __init__(self, in_planes, out_planes, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (
            None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)
        )

    def forward(self, x):
        activated = F.relu(self.bn1(x))
        out = self.conv1(activated)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + (x if self.equal_in_out else self.convShortcut(activated))


class NetworkBlock(nn.Module):
    def __init__(self, count, in_planes, out_planes, stride):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(
                    in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1
                )
                for i in range(count)
            ]
        )

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth=28, widen_factor=10, num_classes=10, sub_block1=False):
        super().__init__()
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, channels[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1)
        if sub_block1:  # Present in some checkpoints, never used in the forward pass.
            self.sub_block1 = NetworkBlock(n, channels[0], channels[1], 1)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.fc = nn.Linear(channels[3], num_classes)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


# --- DMWideResNet (Gowal et al. 2020) -------------------------------------------------


class DMBlock(nn.Module):
    def __init__(self, in_planes, out_planes, stride, activation):
        super().__init__()
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = activation()
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride, 0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = activation()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.has_shortcut = in_planes != out_planes
        self.shortcut = (
            nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)
            if self.has_shortcut
            else None
        )
        self.stride = stride

    def forward(self, x):
        activated = self.relu_0(self.batchnorm_0(x))
        # TensorFlow "SAME": stride 2 pads only the bottom and right.
        pad = (1, 1, 1, 1) if self.stride == 1 else (0, 1, 0, 1)
        out = self.conv_0(F.pad(activated, pad))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        return out + (self.shortcut(activated) if self.has_shortcut else x)


class DMBlockGroup(nn.Module):
    def __init__(self, count, in_planes, out_planes, stride, activation):
        super().__init__()
        self.block = nn.Sequential(
            *[
                DMBlock(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    activation,
                )
                for i in range(count)
            ]
        )

    def forward(self, x):
        return self.block(x)


class DMWideResNet(nn.Module):
    def __init__(
        self,
        depth=28,
        width=10,
        num_classes=10,
        activation=nn.ReLU,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    ):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1), persistent=False)
        channels = [16, 16 * width, 32 * width, 64 * width]
        n = (depth - 4) // 6
        self.init_conv = nn.Conv2d(3, channels[0], 3, 1, 1, bias=False)
        self.layer = nn.Sequential(
            DMBlockGroup(n, channels[0], channels[1], 1, activation),
            DMBlockGroup(n, channels[1], channels[2], 2, activation),
            DMBlockGroup(n, channels[2], channels[3], 2, activation),
        )
        self.batchnorm = nn.BatchNorm2d(channels[3])
        self.relu = activation()
        self.logits = nn.Linear(channels[3], num_classes)

    def forward(self, x):
        out = self.layer(self.init_conv((x - self.mean) / self.std))
        out = self.relu(self.batchnorm(out))
        return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))


# --- torchvision ResNet-50 -------------------------------------------------------------


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes, planes, stride):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.downsample = None
        if stride != 1 or in_planes != out_planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    def __init__(self, stage_sizes=(3, 4, 6, 3), width=64, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_planes = width
        for i, count in enumerate(stage_sizes):
            layers = []
            for j in range(count):
                layers.append(Bottleneck(in_planes, width * 2**i, 2 if i > 0 and j == 0 else 1))
                in_planes = width * 2**i * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.num_stages = len(stage_sizes)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            out = getattr(self, f"layer{i + 1}")(out)
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and BatchNorm statistics, then eval mode.

    Every parameter and buffer is redrawn: BatchNorm scales near 1, running variances
    in [0.5, 2], running means of spread 0.2, so eval-mode BatchNorm differs from the
    identity and from batch statistics. Convolution weights are scaled by fan-in so
    activations stay of order one through deep networks.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(1 + 0.2 * torch.randn(c, generator=generator))
                module.bias.copy_(0.2 * torch.randn(c, generator=generator))
                module.running_mean.copy_(0.2 * torch.randn(c, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=generator))
                module.num_batches_tracked.fill_(7)
            elif isinstance(module, nn.Conv2d | nn.Linear):
                fan_in = module.weight[0].numel()
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=generator) / fan_in**0.5
                )
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
    return model.eval()

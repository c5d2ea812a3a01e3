"""ResNet backbones whose stages 3-4 take any fusion strategy.

The layout follows torchvision's ResNet (v1.5: stride on the 3x3 conv), so with fusion="conv"
`resnet50` has exactly torchvision's parameter count. As in the paper, the 3x3 conv of every
bottleneck in the attention stages becomes a LESA2d, except the first block of stage 3, which
keeps its strided conv.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from .binary import BinaryTerm, RelativePosition2d
from .block import LESA2d
from .deformable import DeformableConv3x3
from .fusion import check_fusion
from .names import Registry, unknown
from .raster import RasterPosition


@dataclass(frozen=True)
class Arch:
    layers: tuple[int, int, int, int]
    widths: tuple[int, int, int, int]  # bottleneck (mid) widths per stage
    expansion: int = 4
    stem: str = "imagenet"  # imagenet: 7x7/2 conv + 3x3/2 max pool; small: 3x3/2 conv + max pool;
    stem_width: int = 64    # cifar: 3x3/1 conv, no pooling
    out_scale: int = 1  # output width = widths[i] * expansion / out_scale (2 for wide nets)
    note: str = ""


ARCHS: Registry = Registry("backbone", Arch, {
    "resnet50": Arch((3, 4, 6, 3), (64, 128, 256, 512), note="ImageNet/COCO scale"),
    "resnet26": Arch((2, 2, 2, 2), (64, 128, 256, 512), note="ImageNet/COCO scale"),
    "wrn50": Arch((3, 4, 6, 3), (128, 256, 512, 1024), out_scale=2, note="wide ResNet-50-2"),
    "resnet_tiny": Arch((1, 1, 2, 1), (8, 16, 32, 64), stem="cifar", stem_width=16,
                        note="CPU-sized, for 32x32 inputs"),
    "resnet_small": Arch((1, 1, 2, 1), (16, 32, 64, 128), stem="small", stem_width=16,
                         note="CPU-sized, for 128x128 inputs (detection)"),
}, home="lesa/backbone.py").seal()


def register_backbone(name: str, arch: Arch) -> Arch:
    """ARCHS[name] = arch: a ResNet layout of one's own (a plugin, docs/plugins.md) that every
    strategy, task and command can then name (lesa.names.Registry's rules)."""
    return ARCHS.add(name, arch)


def unregister_backbone(name: str) -> None:
    """Remove a backbone that is not a built-in (a plugin's, when it is unloaded)."""
    ARCHS.remove(name)


class Bottleneck(nn.Module):
    def __init__(self, in_channels: int, mid: int, out_channels: int, stride: int, dilation: int,
                 fusion: str, heads: int, max_map_size: int, window: int | None = None,
                 fusion_options: dict | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = LESA2d(mid, heads=heads, fusion=fusion, stride=stride, dilation=dilation,
                            max_map_size=max_map_size, window=window,
                            **(fusion_options or {}))  # includes its BN
        self.conv3 = nn.Conv2d(mid, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.conv2(out))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _stem(kind: str, width: int, in_channels: int) -> tuple[nn.Sequential, int]:
    if kind == "imagenet":
        layers = [nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
        return nn.Sequential(*layers), 4
    if kind == "small":
        layers = [nn.Conv2d(in_channels, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width),
                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
        return nn.Sequential(*layers), 4
    if kind != "cifar":
        raise ValueError(f"unknown stem {kind!r}: imagenet, small or cifar")
    layers = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
              nn.ReLU(inplace=True)]
    return nn.Sequential(*layers), 1


def module_seed(seed: int, name: str) -> int:
    """A 64-bit seed from (seed, a module's qualified name): a module draws the same numbers in
    every model that has it under that name, whatever else the model holds."""
    digest = hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _draw(param: torch.Tensor, init, generator: torch.Generator, **kwargs) -> None:
    """param <- init(tensor of its shape, **kwargs, generator=generator), drawn on the
    generator's device (CPU) and copied: the same numbers whatever device param lives on."""
    draw = torch.empty(param.shape, dtype=param.dtype, device=generator.device)
    init(draw, **kwargs, generator=generator)
    param.copy_(draw)


NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def seeded_init(model: nn.Module, seed: int) -> None:
    """Initialise every module that holds parameters from its own generator, seeded with
    `module_seed(seed, qualified name)`, with the distributions of the unseeded path: convs
    kaiming normal (fan out; a bias as nn.Conv2d's default), norms ones / zeros, linear layers
    nn.Linear's default, the relative position tables N(0, 1/dim), any other module its own
    `reset_parameters` (under torch's RNG seeded the same way). Two models then hold
    bit-identical tensors wherever a parameter has the same name and shape."""
    for name, module in model.named_modules():
        if next(module.parameters(recurse=False), None) is None:
            continue
        g = torch.Generator().manual_seed(module_seed(seed, name))
        with torch.no_grad():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                if isinstance(module, nn.Conv2d):
                    _draw(module.weight, nn.init.kaiming_normal_, g, mode="fan_out",
                          nonlinearity="relu")
                else:  # nn.Linear.reset_parameters
                    _draw(module.weight, nn.init.kaiming_uniform_, g, a=math.sqrt(5))
                if module.bias is not None:  # both layers' default bias
                    fan_in = module.weight[0].numel()
                    bound = 1 / math.sqrt(fan_in) if fan_in else 0.0
                    _draw(module.bias, nn.init.uniform_, g, a=-bound, b=bound)
            elif isinstance(module, NORMS):
                for param, value in ((module.weight, 1.0), (module.bias, 0.0)):
                    if param is not None:
                        param.fill_(value)
            elif isinstance(module, (RelativePosition2d, RasterPosition, DeformableConv3x3)):
                module.reset_parameters(generator=g)
            elif hasattr(module, "reset_parameters"):  # e.g. a registered strategy's own layer
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(module_seed(seed, name))
                    module.reset_parameters()
            else:
                raise TypeError(f"{name} ({type(module).__name__}) holds parameters but has no "
                                f"seeded initialisation: give it a reset_parameters() method")


def _scaled_width(mid: int, width: float, multiple: int) -> int:
    return mid if width == 1 else max(multiple, multiple * round(mid * width / multiple))


def _stage_window(window, stage: int) -> int | None:
    if isinstance(window, dict):  # keys may be ints (YAML) or strings (JSON)
        return window.get(stage, window.get(str(stage)))
    return window


class ResNet(nn.Module):
    """A bottleneck ResNet with LESA in `attention_stages` (numbered 1-4; the paper uses 3, 4).

    forward(x) gives logits when built with num_classes, else pooled features (B, C).
    forward_features(x) gives the OrderedDict {"layer1".."layer4"} of feature maps a detector
    needs; `feature_channels` and `feature_strides` describe them. output_stride=16 runs stage
    4 at stride 1 (the paper's ImageNet layout; its convs are dilated). `window` makes the
    attention local (lesa/window.py): an int for every attention stage, or a mapping from stage
    to int or None, e.g. {3: None, 4: 8}; None (default) keeps global attention everywhere.
    `channels_last=True` keeps the weights and every feature map in the channels-last memory
    format (the input is converted on entry; the features come out channels last), which saves
    the blocks' layout conversions on CPU.
    `recompute_attention=True` makes every global attention rebuild its softmax weights in the
    backward pass instead of keeping them (`BinaryTerm.recompute`: memory O(L), not L x L), and
    every windowed one whose operands exceed its `chunk_bytes` rebuild them in checkpointed
    chunks of block rows.
    `init_seed` (an int) initialises every module from its own generator, seeded with
    (init_seed, its qualified name) (`seeded_init`): two models built with the same init_seed,
    whatever their fusion strategies, hold bit-identical tensors wherever a parameter has the
    same name and shape (a paired design: strategies differ only where they differ), and
    building one leaves torch's global (CPU) RNG as it was. None (default): the modules draw
    from torch's global RNG in construction order.
    `fusion_options` (a mapping) goes to the attention stages' strategy, which takes the keys
    it uses (e.g. {"weight": 0.3} for `static`).
    `logits`, `positions`, `unary` choose the attention stages' terms (LESA2d; the release's
    choices are options, see `build_backbone(release=...)`); `deformable_stages` (numbered 1-4)
    makes the 3x3 convs of those stages deformable (the blocks that are convs there; the
    detection release's stage_with_dcn F,T,T,T is (2, 3, 4)).
    `width` multiplies every stage's bottleneck width (the stem keeps its own): rounded to an
    integer, and in an attention stage to a multiple of 2 * heads, which the heads' q/k split
    needs (`stage_widths` says what was built).
    `frozen_stages` (mmdetection's ResNet option): -1 (default) trains everything; k >= 0
    freezes the stem and stages 1..k (no gradients, and evaluation mode whatever `train()`
    says). `norm_eval=True` keeps every BatchNorm of the backbone (the attention's logit and
    gate BatchNorms included) in evaluation mode, on its running statistics, through
    `train()`; their affine parameters still learn unless frozen. The detection release
    trains with both (`RELEASE`).
    """

    def __init__(self, arch: Arch, fusion: str = "dynamic", num_classes: int | None = None,
                 heads: int = 8, output_stride: int = 32, attention_stages=(3, 4),
                 max_map_size: int = 64, in_channels: int = 3,
                 window: int | dict[int, int | None] | None = None,
                 recompute_attention: bool = False, channels_last: bool = False,
                 init_seed: int | None = None, fusion_options: dict | None = None,
                 logits: str = "scaled", positions: str = "relative2d", unary: str = "grouped",
                 deformable_stages=(), width: float = 1.0, frozen_stages: int = -1,
                 norm_eval: bool = False):
        if isinstance(init_seed, bool) or not isinstance(init_seed, (int, type(None))):
            raise TypeError(f"init_seed must be an int or None, not {init_seed!r}")
        global_rng = torch.get_rng_state() if init_seed is not None else None
        super().__init__()
        check_fusion(fusion)
        if output_stride not in (16, 32):
            raise ValueError(f"output_stride must be 16 or 32, not {output_stride}")
        self.stem, stride_so_far = _stem(arch.stem, arch.stem_width, in_channels)
        channels = arch.stem_width
        if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
            raise ValueError(f"width must be a number > 0, not {width!r}")
        if not all(s in (1, 2, 3, 4) for s in deformable_stages):
            raise ValueError(f"deformable_stages are numbered 1-4, not {deformable_stages!r}")
        terms = {"logits": logits, "positions": positions, "unary": unary,
                 **(fusion_options or {})}
        self.feature_channels, self.feature_strides, self.stage_widths = [], [], []
        for index, (blocks, mid) in enumerate(zip(arch.layers, arch.widths)):
            stage = index + 1
            mid = _scaled_width(mid, width, 2 * heads if stage in attention_stages
                                and fusion != "conv" else 1)
            self.stage_widths.append(mid)
            stride = 1 if stage == 1 else 2
            dilation = 1
            if stage == 4 and output_stride == 16:
                stride, dilation = 1, 2
            out_channels = mid * arch.expansion // arch.out_scale
            stage_blocks = []
            for b in range(blocks):
                block_stride = stride if b == 0 else 1
                use_attention = stage in attention_stages and not (stage == 3 and b == 0)
                # `deformable` reaches the convs only (the attention strategies do not take it)
                options = {**(terms if use_attention else {}),
                           **({"deformable": True} if stage in deformable_stages else {})}
                stage_blocks.append(Bottleneck(
                    channels, mid, out_channels, block_stride, dilation,
                    fusion if use_attention else "conv", heads, max_map_size,
                    _stage_window(window, stage), options))
                channels = out_channels
            setattr(self, f"layer{stage}", nn.Sequential(*stage_blocks))
            stride_so_far *= stride
            self.feature_channels.append(channels)
            self.feature_strides.append(stride_so_far)
        self.out_channels = channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes) if num_classes else None
        self.init_seed = init_seed
        if init_seed is None:
            self._init_weights()
        else:
            seeded_init(self, init_seed)
            torch.set_rng_state(global_rng)  # what construction drew depends on the strategy
        for m in self.modules():
            if isinstance(m, BinaryTerm):
                m.recompute = recompute_attention
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)
        if isinstance(frozen_stages, bool) or frozen_stages not in (-1, 0, 1, 2, 3, 4):
            raise ValueError(f"frozen_stages must be -1 (none) or 0-4 (the stem and stages "
                             f"1..k), not {frozen_stages!r}")
        if not isinstance(norm_eval, bool):
            raise ValueError(f"norm_eval must be True or False, not {norm_eval!r}")
        self.frozen_stages, self.norm_eval = frozen_stages, norm_eval
        for module in self.frozen_modules():
            module.requires_grad_(False)
        self.train(self.training)

    def frozen_modules(self) -> list[nn.Module]:
        """The stem and stages 1..frozen_stages (none at -1)."""
        if self.frozen_stages < 0:
            return []
        return [self.stem] + [getattr(self, f"layer{s}") for s in range(1, self.frozen_stages + 1)]

    def train(self, mode: bool = True) -> "ResNet":
        """As nn.Module.train, but the frozen stages stay in evaluation mode and, with
        norm_eval, every BatchNorm: a trainer's `model.train()` reaches this through any
        parent module, so the options hold in every training loop."""
        super().train(mode)
        if mode:
            for module in self.frozen_modules():
                module.eval()
            if self.norm_eval:
                for module in self.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d) and m.affine:  # dynamic_frozen's is not
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        x = self.stem(self._input(x))
        features = OrderedDict()
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}")(x)
            features[f"layer{stage}"] = x
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self._input(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.pool(x), 1)
        return self.fc(x) if self.fc is not None else x


# The released code's choices per task (docs/library.md, "The release's choices"); its map size
# (the tables' reach) and output stride stay separate options: max_map_size 14 and
# output_stride 16 for the ImageNet release at 224 x 224.
RELEASE = {
    "classification": {"logits": "batchnorm", "positions": "raster", "unary": "grouped",
                       "deformable_stages": ()},
    # its mmdetection configs also train with BatchNorm on running statistics (norm_eval) and
    # the stem and stage 1 frozen, as mmdetection's ResNets do by default
    "detection": {"logits": "batchnorm", "positions": "relative2d", "unary": "deformable",
                  "deformable_stages": (2, 3, 4), "norm_eval": True, "frozen_stages": 1},
}


def release_options(release) -> dict:
    """The options `release` selects: False/None nothing, True the classification release's,
    or "classification" / "detection"."""
    if release is None or release is False:
        return {}
    if release is True:
        release = "classification"
    if release not in RELEASE:
        raise ValueError(f"release must be true, false, 'classification' or 'detection', not "
                         f"{release!r}")
    return dict(RELEASE[release])


def build_backbone(name: str, fusion: str = "dynamic", num_classes: int | None = None,
                   release: bool | str = False, **kwargs) -> ResNet:
    """Build a backbone by name (`lesa.ARCHS`): resnet50, resnet26, wrn50, resnet_tiny (32x32
    inputs), resnet_small (128x128 inputs). kwargs go to `ResNet` (heads, output_stride,
    attention_stages, max_map_size, in_channels, window, recompute_attention, channels_last,
    init_seed, fusion_options, logits, positions, unary, deformable_stages, width,
    frozen_stages, norm_eval) and `stem`
    (imagenet, small or cifar) to replace the architecture's stem. `release` (True or
    "classification", or "detection") selects the released code's choices for that task
    (`RELEASE`); an option given here (not None) wins over the preset."""
    if name not in ARCHS:
        raise ValueError(unknown("backbone", name, ARCHS))
    arch = ARCHS[name]
    stem = kwargs.pop("stem", None)
    if stem:  # e.g. a ResNet-50 on 32x32 CIFAR images takes the 3x3/1 "cifar" stem
        arch = dataclasses.replace(arch, stem=stem)
    given = {key: value for key, value in kwargs.items() if value is not None}
    return ResNet(arch, fusion=fusion, num_classes=num_classes,
                  **{**release_options(release), **given})

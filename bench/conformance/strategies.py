"""The contract of a fusion strategy (lesa/fusion.py's docstring), check by check. Every
built-in passes it (tests/test_conformance.py); `lesa-bench check-plugin` runs it on a plugin's.

Each check is a function of the strategy's name that returns a detail line on success and
raises (AssertionError with what is wrong, or whatever the strategy raised) on failure; all run
on CPU at a few small sizes (channels 16, 2 heads, maps up to 16x16).
"""
from __future__ import annotations

import copy
import inspect
import math
import pickle

import torch

CHANNELS, HEADS, MAX_MAP = 16, 2, 16
SIZES = ((5, 7), (8, 8), (16, 16))  # odd, square, the tables' reach
STRIDES = (1, 2)
PLAIN = (bool, int, float, str, list, type(None))


def _cls(name: str):
    import lesa

    return lesa.FUSIONS[name]


def _defaults(name: str) -> dict:
    return dict(getattr(_cls(name), "options", None) or {})


def _block(name: str, stride: int = 1, seed: int = 0):
    """LESA2d(CHANNELS) with this strategy (as a backbone builds it), under torch seed `seed`."""
    import lesa

    torch.manual_seed(seed)
    return lesa.LESA2d(CHANNELS, heads=HEADS, fusion=name, stride=stride, max_map_size=MAX_MAP,
                       **_defaults(name))


def _input(h: int = 8, w: int = 8, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, CHANNELS, h, w, generator=g).to(dtype)


def declared(name: str) -> str:
    """A Fusion subclass whose options are plain defaults its constructor takes and its own
    check_options accepts."""
    from lesa.fusion import Fusion

    cls = _cls(name)
    assert issubclass(cls, Fusion), f"{cls.__qualname__} is no lesa.fusion.Fusion subclass"
    options = _defaults(name)
    bad = {k: v for k, v in options.items() if not isinstance(v, PLAIN)}
    assert not bad, f"option defaults must be YAML values (number, text, bool, list, null): {bad}"
    takes = inspect.signature(cls).parameters
    kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in takes.values())
    missing = [k for k in options if k not in takes and not kwargs]
    assert not missing, f"the constructor does not take its option(s) {missing}"
    cls.check_options(dict(options))
    return f"options {options}" if options else "no options of its own"


def config_options(name: str) -> str:
    """The options are config keys model.<name>.<option>: defaults resolve, a wrong type is a
    ConfigError naming the key (before any run starts)."""
    from bench.config import ConfigError, resolve

    cfg = resolve({"model": {"fusion": name}})
    options = _defaults(name)
    assert cfg["model"].get(name, {}) == options or not options, cfg["model"].get(name)
    refused = 0
    for key, default in options.items():
        wrong = "text" if not isinstance(default, str) else 12345
        try:
            resolve({"model": {"fusion": name, name: {key: wrong}}})
        except ConfigError as err:
            assert f"model.{name}.{key}" in str(err), f"the refusal does not name the key: {err}"
            refused += 1
        else:
            raise AssertionError(f"model.{name}.{key}: {wrong!r} was accepted")
    return f"{refused} wrong-typed option(s) refused at load" if options else "no options"


def shapes(name: str) -> str:
    """(B, C, H, W) -> (B, C, ceil(H / s), ceil(W / s)), the input's dtype, finite."""
    seen = []
    for stride in STRIDES:
        block = _block(name, stride)
        for h, w in SIZES:
            y = block(_input(h, w))
            want = (2, CHANNELS, math.ceil(h / stride), math.ceil(w / stride))
            assert tuple(y.shape) == want, f"{h}x{w} stride {stride}: {tuple(y.shape)}, not {want}"
            assert y.dtype == torch.float32, f"{h}x{w} stride {stride}: dtype {y.dtype}"
            assert torch.isfinite(y).all(), f"{h}x{w} stride {stride}: non-finite output"
            seen.append(f"{h}x{w}/{stride}")
    return f"maps {', '.join(seen)}"


def gradients(name: str) -> str:
    """A backward pass reaches every parameter, with finite gradients."""
    block = _block(name).train()
    y = block(_input().requires_grad_())
    (y * torch.randn_like(y)).sum().backward()
    params = [(n, p) for n, p in block.named_parameters() if p.requires_grad]
    none = [n for n, p in params if p.grad is None]
    assert not none, f"no gradient reaches {', '.join(none)}"
    bad = [n for n, p in params if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients in {', '.join(bad)}"
    return f"{len(params)} parameter tensors"


def determinism(name: str) -> str:
    """The same torch seed builds the same weights; the same input gives the same output."""
    a, b = _block(name, seed=0), _block(name, seed=0)
    for (key, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), f"{key} differs between two builds under one seed"
    x = _input()
    assert torch.equal(a(x), b(x)), "two builds under one seed give different outputs"
    assert torch.equal(a.eval()(x), a.eval()(x)), "two evaluation forwards differ"
    return "weights and outputs repeat"


def seeded_init(name: str) -> str:
    """resnet_tiny with init_seed (what every run builds) initialises every parameter of the
    strategy, twice the same, leaving torch's RNG alone."""
    import lesa

    def build():
        return lesa.build_backbone("resnet_tiny", fusion=name, num_classes=4, heads=HEADS,
                                   max_map_size=MAX_MAP, init_seed=0,
                                   fusion_options=_defaults(name))

    state = torch.get_rng_state()
    try:
        a, b = build(), build()
    except TypeError as err:  # seeded_init: parameters of its own without reset_parameters()
        raise AssertionError(str(err)) from None
    assert torch.equal(state, torch.get_rng_state()), "building moved torch's global RNG"
    for (key, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), f"{key} differs between two builds with init_seed 0"
    return f"{sum(p.numel() for p in a.parameters())} parameters in resnet_tiny"


def float64(name: str) -> str:
    """The same weights in float64 give the float32 output to float32 rounding."""
    a = _block(name).eval()
    b = copy.deepcopy(a).double()
    with torch.no_grad():
        y32, y64 = a(_input()), b(_input(dtype=torch.float64))
    assert y64.dtype == torch.float64, f"a float64 input gives {y64.dtype}"
    err = (y32.double() - y64).abs().max().item()
    scale = y64.abs().max().item()
    assert err <= 1e-4 + 1e-3 * scale, f"max |float32 - float64| = {err:.3g} (outputs ~{scale:.3g})"
    return f"max difference {err:.1e}"


def state_dict(name: str) -> str:
    """A state_dict (BatchNorm statistics included) loads into a fresh build, strictly, and
    gives the same outputs."""
    a, b = _block(name, seed=0).train(), _block(name, seed=1)
    a(_input(seed=3))  # moves the running statistics away from their initial values
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    with torch.no_grad():
        assert torch.equal(a(_input()), b(_input())), "outputs differ after load_state_dict"
    return f"{len(a.state_dict())} entries"


def share(name: str) -> str:
    """The unary share `fuse` reports is a fraction in [0, 1] (a number or a (B, k, H, W)
    tensor of them) or None; the record (percent) agrees."""
    from lesa.fusion import Fusion

    module = _block(name).fusion
    x = _input()
    if type(module).fuse is Fusion.fuse:  # its own forward (like conv): only the record
        module(x)
        value = module.last_unary_share
        assert value is None or 0 <= value <= 100, f"recorded share {value} is not a percent"
        return "none reported" if value is None else f"{value:.1f} %"
    with torch.no_grad():
        y, value = module.fuse(x)
    assert tuple(y.shape) == tuple(x.shape), f"fuse gives {tuple(y.shape)}, not x's shape"
    if value is None:
        return "None: no share reported"
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        assert value.dim() == 4 and value.shape[0] == x.shape[0] \
            and tuple(value.shape[-2:]) == tuple(x.shape[-2:]), \
            f"a share tensor is (B, k, H, W), not {tuple(value.shape)}"
        low, high = value.min().item(), value.max().item()
    else:
        assert isinstance(value, (int, float, torch.Tensor)) and not isinstance(value, bool), \
            f"share {value!r} is not a number, a tensor or None"
        low = high = float(value)
    assert 0 <= low and high <= 1, f"share in [{low:.3g}, {high:.3g}]: not a fraction in [0, 1]"
    module(x)
    recorded = module.last_unary_share
    assert recorded is not None and 0 <= recorded <= 100, f"recorded {recorded}"
    return f"{recorded / 100:.3f}"


def meta(name: str) -> str:
    """resnet_tiny builds and runs forward on the meta device: the model check `run` makes
    before any training (shapes only; a data-dependent .item() fails here)."""
    import lesa

    with torch.device("meta"):
        net = lesa.build_backbone("resnet_tiny", fusion=name, num_classes=4, heads=HEADS,
                                  max_map_size=MAX_MAP, fusion_options=_defaults(name))
        lesa.record_shares(net, False)
        with torch.no_grad():
            y = net(torch.empty(2, 3, 16, 16))
    assert tuple(y.shape) == (2, 4), f"logits {tuple(y.shape)}"
    return "builds and runs"


def trains(name: str, steps: int = 5) -> str:
    """resnet_tiny (init_seed 0) trains a few SGD steps on 16x16 inputs: finite losses and
    weights, and the weights move."""
    import lesa

    net = lesa.build_backbone("resnet_tiny", fusion=name, num_classes=4, heads=HEADS,
                              max_map_size=MAX_MAP, init_seed=0, fusion_options=_defaults(name))
    lesa.record_shares(net, False)  # as the training loop does
    g = torch.Generator().manual_seed(0)
    x, labels = torch.randn(16, 3, 16, 16, generator=g), torch.randint(0, 4, (16,), generator=g)
    before = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for step in range(steps):
        batch = slice(8 * (step % 2), 8 * (step % 2) + 8)
        loss = torch.nn.functional.cross_entropy(net(x[batch]), labels[batch])
        assert torch.isfinite(loss), f"loss {loss.item()} at step {step}"
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    bad = [n for n, p in net.named_parameters() if not torch.isfinite(p).all()]
    assert not bad, f"non-finite weights after training: {', '.join(bad[:3])}"
    moved = sum(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert moved, "no weight changed"
    return f"loss {losses[0]:.2f} -> {losses[-1]:.2f} in {steps} steps"


def pickles(name: str) -> str:
    """The block pickles and unpickles to the same outputs (workers, DDP, checkpoints)."""
    block = _block(name).eval()
    again = pickle.loads(pickle.dumps(block))
    with torch.no_grad():
        assert torch.equal(block(_input()), again(_input())), "outputs differ after a pickle"
    return f"as {type(block.fusion).__module__}.{type(block.fusion).__qualname__}"


CHECKS = {"declared": declared, "config options": config_options, "shape and dtype": shapes,
          "gradients": gradients, "determinism": determinism, "seeded init": seeded_init,
          "float64 vs float32": float64, "state_dict": state_dict, "share": share,
          "meta device": meta, "trains": trains, "pickles": pickles}

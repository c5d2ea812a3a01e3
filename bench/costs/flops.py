"""FLOPs of one call (`count_flops`) and of a module's forward on one example (`forward_flops`), by
torch.utils.flop_counter, with CPU attention counted on every torch.

FlopCounterMode counts SDPA's CUDA kernels, but torch before 2.15 has no formula for its fused
CPU kernel (`_scaled_dot_product_flash_attention_for_cpu` and its backward), so CPU attention
would count 0 FLOPs. The missing formulas (torch's own SDPA formulas, zero padding counted as
executed) are passed in as `custom_mapping` only where the installed torch lacks them, so a
newer torch's own formulas win. LESA's fused CPU kernel (lesa/kernels/fused_cpu.py, a torch
custom op) is counted as the two products it computes, q k^T and p v, at the real widths.
"""
from __future__ import annotations


def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args,
                       out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _lesa_fused(query_shape, k_tiles_shape, value_shape, *args, out_shape=None,
                **kwargs) -> int:
    n, length, d = query_shape
    return 2 * n * length * length * (d + value_shape[-1])


def _formulas() -> dict:
    import torch
    from torch.utils.flop_counter import flop_registry

    import lesa.kernels.fused_cpu  # noqa: F401  (registers torch.ops.lesa.relative_attention_cpu)

    aten = torch.ops.aten
    formulas = {torch.ops.lesa.relative_attention_cpu: _lesa_fused}
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward",
                           _cpu_sdpa_backward)):
        op = getattr(aten, name, None)
        if op is not None and op not in flop_registry:
            formulas[op] = formula
    return formulas


def count_flops(fn) -> int:
    """Total FLOPs (2 per multiply-add) of the torch ops that `fn()` runs: matmuls,
    convolutions and attention kernels as executed; elementwise ops are not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_formulas()) as counter:
        fn()
    return counter.get_total_flops()


def forward_flops(module, example) -> int:
    """Forward FLOPs of one example (torch.utils.flop_counter, as Lightning's summary does)."""
    import torch

    example = example.to(next(module.parameters()).device)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return count_flops(lambda: module(example))
    finally:
        module.train(was_training)

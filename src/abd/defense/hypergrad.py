"""Implicit hypergradients by fixed-point (Neumann) iterations, as in I-BAU (Zeng et al., ICLR 2022).

For an inner fixed point w* = Phi(w*, theta) and an outer loss L(w*(theta), theta),
dL/dtheta = g_theta + (dPhi/dtheta)^T (I - dPhi/dw)^{-T} g_w, with the inverse approximated by K terms
of its Neumann series: v_k = (dPhi/dw)^T v_{k-1} + g_w.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def fixed_point_hypergrad(
    params: Sequence[torch.Tensor],
    w: torch.Tensor,
    inner_map: Callable[[torch.Tensor, Sequence[torch.Tensor]], torch.Tensor],
    outer_loss: Callable[[torch.Tensor, Sequence[torch.Tensor]], torch.Tensor],
    k: int = 5,
    tol: float = 1e-10,
) -> list[torch.Tensor]:
    """The hypergradient of `outer_loss` w.r.t. `params` at the inner fixed point `w`.

    ``inner_map(w, params)`` is Phi (it must be differentiable in both arguments, e.g. one gradient step
    on the inner loss built with ``create_graph=True``); ``outer_loss(w, params)`` is a scalar.
    Returns one gradient tensor per parameter (zeros where a parameter is unused).
    """
    params = list(params)
    w = w.detach().requires_grad_(True)
    out = outer_loss(w, params)
    grads = torch.autograd.grad(out, [w, *params], allow_unused=True)
    g_w = grads[0] if grads[0] is not None else torch.zeros_like(w)
    g_theta = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads[1:], params)]

    w_next = inner_map(w, params)
    v = torch.zeros_like(w)
    for _ in range(k):
        jv = torch.autograd.grad(w_next, w, grad_outputs=v, retain_graph=True, allow_unused=True)[0]
        v_new = (jv if jv is not None else torch.zeros_like(w)) + g_w
        done = torch.norm(v_new - v) < tol
        v = v_new
        if done:
            break
    jt = torch.autograd.grad(w_next, params, grad_outputs=v, allow_unused=True)
    return [g + (j if j is not None else 0.0) for g, j in zip(g_theta, jt)]

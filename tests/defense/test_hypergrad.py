"""The implicit hypergradient against closed forms and explicit unrolled differentiation."""

from __future__ import annotations

import torch

from abd.defense.hypergrad import fixed_point_hypergrad


def _quadratic_problem(c: float = 0.5, eta: float = 0.3):
    torch.manual_seed(0)
    theta = torch.randn(5, requires_grad=True)
    b = torch.randn(5)

    def inner_loss(w, th):
        return 0.5 * (w - th[0]).pow(2).sum() + 0.5 * c * w.pow(2).sum()

    def inner_map(w, th):
        g = torch.autograd.grad(inner_loss(w, th), w, create_graph=True)[0]
        return w - eta * g

    def outer_loss(w, th):
        return (w * b).sum() + 0.5 * th[0].pow(2).sum()

    w_star = (theta / (1 + c)).detach()
    return theta, b, w_star, inner_map, outer_loss


def test_hypergradient_matches_closed_form_implicit_gradient() -> None:
    c = 0.5
    theta, b, w_star, inner_map, outer_loss = _quadratic_problem(c)
    (g,) = fixed_point_hypergrad([theta], w_star, inner_map, outer_loss, k=200)
    exact = theta.detach() + b / (1 + c)  # d/dtheta [b . theta/(1+c) + |theta|^2/2]
    torch.testing.assert_close(g, exact, atol=1e-5, rtol=1e-5)


def test_truncated_hypergradient_equals_unrolled_backprop_nonlinear() -> None:
    """K Neumann terms at a fixed point = back-propagating through K unrolled steps of Phi."""
    torch.manual_seed(1)
    lin = torch.nn.Linear(6, 3)
    params = list(lin.parameters())
    x = torch.randn(8, 6)
    eta, k = 0.2, 5

    def inner_map(w, th):
        out = torch.nn.functional.linear(x + w, th[0], th[1])
        loss = -torch.log_softmax(out, 1)[:, 0].mean() + 0.5 * w.pow(2).sum()
        g = torch.autograd.grad(loss, w, create_graph=True)[0]
        return w - eta * g

    def outer_loss(w, th):
        out = torch.nn.functional.linear(x + 0.5 * w, th[0], th[1])
        return out.pow(2).mean()

    w = torch.zeros(1, 6)
    for _ in range(500):  # converge to the fixed point
        w = inner_map(w.detach().requires_grad_(True), params).detach()
    hyper = fixed_point_hypergrad(params, w, inner_map, outer_loss, k=k)

    w_unrolled = w.clone().requires_grad_(True)
    cur = w_unrolled
    for _ in range(k):
        cur = inner_map(cur, params)
    # gradient of L_out(w_K(theta), theta) where w_0 = w* is held constant
    unrolled = torch.autograd.grad(outer_loss(cur, params), params)
    for h, u in zip(hyper, unrolled):
        torch.testing.assert_close(h, u, atol=1e-5, rtol=1e-4)

"""The batched one-layer MHA model of the memorization experiments (vitheory.models.mha)."""
import math

import pytest
import torch

from vitheory.models.mha import BatchedMHA, _RowSoftmax, attention_param_count, model_generators, sinusoidal_positions


pytestmark = pytest.mark.usefixtures("one_thread")


def make(K=3, n=5, d=8, H=3, d_head=4, n_out=7, seeds=None, **kw):
    seeds = list(range(K)) if seeds is None else seeds
    return BatchedMHA(n_ctx=n, d_in=d, n_heads=H, d_head=d_head, n_out=n_out,
                      generators=model_generators(seeds), **kw).double()


def inputs(K, B, n, d, shared, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(K, B, d, generator=g, dtype=torch.float64)
    ctx = torch.rand((K, n, d) if shared else (K, B, n, d), generator=g, dtype=torch.float64)
    return q, ctx


def loop_reference(m: BatchedMHA, q, ctx):
    """The model written directly from its equations: one model, one example, one head at a time."""
    K, B = q.shape[:2]
    out = torch.zeros(K, B, m.n_out, dtype=torch.float64)
    for k in range(K):
        for b in range(B):
            E = ctx[k] if ctx.dim() == 3 else ctx[k, b]
            X = torch.cat([q[k, b][None], E])                                  # [n+1, d]
            x = X @ m.W_E[k] + m.b_E[k] + m.pos[: X.shape[0]]
            o = torch.zeros(m.d_model, dtype=torch.float64)
            for h in range(m.heads_active[k]):
                query = x[0] @ m.W_Q[k, h]
                scores = torch.stack([query @ (x[p] @ m.W_K[k, h]) for p in range(X.shape[0])]) * m.scale
                if m.mask == "v2":
                    scores[0] = -math.inf
                else:
                    scores[0] = 0.0
                a = torch.exp(scores - scores.max())
                a = a / a.sum()
                z = sum(a[p] * (x[p] @ m.W_V[k, h]) for p in range(X.shape[0]))
                o = o + z @ m.W_O[k, h]
            out[k, b] = o @ m.W_U[k] + m.b_U[k]
    return out


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("mask", ["v2", "v1"])
def test_matches_per_head_loop(shared, mask):
    m = make(mask=mask)
    q, ctx = inputs(3, 4, 5, 8, shared)
    ref = loop_reference(m, q, ctx)
    with torch.no_grad():
        torch.testing.assert_close(m.forward_query_row(q, ctx), ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(m.forward_full(q, ctx), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("mask", ["v2", "v1"])
@pytest.mark.parametrize("score_scale", ["d_model", "d_head"])
def test_query_row_equals_full_attention(shared, mask, score_scale):
    m = make(K=2, n=6, d=10, H=4, d_head=3, d_v=2, mask=mask, score_scale=score_scale)
    q, ctx = inputs(2, 9, 6, 10, shared, seed=3)
    with torch.no_grad():
        lr, a_row = m.forward_query_row(q, ctx, return_attn=True)
        lf, a_full = m.forward_full(q, ctx, return_attn=True)
    torch.testing.assert_close(lr, lf, rtol=1e-10, atol=1e-10)
    row0 = a_full[:, :, :, 0, :]                                     # the query's row, all n+1 keys
    torch.testing.assert_close(a_row, row0 if mask == "v1" else row0[..., 1:], rtol=1e-10, atol=1e-12)
    # and the gradients agree too (the fast path is what training differentiates)
    g_row = torch.autograd.grad(m.forward_query_row(q, ctx).square().sum(), list(m.parameters()))
    g_full = torch.autograd.grad(m.forward_full(q, ctx).square().sum(), list(m.parameters()))
    for a, b in zip(g_row, g_full):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_mask_excludes_the_query_exactly():
    m = make(K=2, n=4, d=6, H=2, d_head=6)
    with torch.no_grad():                                            # make scores favour the query strongly
        m.W_Q.mul_(50.0)
        m.W_K.mul_(50.0)
    q, ctx = inputs(2, 8, 4, 6, shared=True)
    _, attn = m.forward_full(q, ctx, return_attn=True)
    assert (attn[..., 0] == 0).all()                                 # every row, every head: exactly zero
    torch.testing.assert_close(attn.sum(-1), torch.ones_like(attn.sum(-1)))
    # the query output does not depend on the query's own value vector: move W_V's effect on token 0 only
    _, attn_row = m.forward_query_row(q, ctx, return_attn=True)
    assert attn_row.shape == (2, 8, 2, 4)                            # over the n context tokens only
    # v1 comparison flag: the query keeps a positive weight on itself, and the output changes
    v2 = make(K=2, n=4, d=6, H=2, d_head=6)
    v1 = make(K=2, n=4, d=6, H=2, d_head=6, mask="v1")
    _, a1 = v1.forward_full(q, ctx, return_attn=True)
    assert (a1[:, :, :, 0, 0] > 0.05).all()                          # the query attends to itself
    assert not torch.allclose(v1.forward_full(q, ctx), v2.forward_full(q, ctx))


def test_query_output_invariant_to_query_value():
    """z_h = sum_p a_hp v_p with a_h0 = 0: a value for token 0 (and nothing else) cannot change the output."""
    m = make(K=1, n=3, d=5, H=2, d_head=5)
    q, ctx = inputs(1, 6, 3, 5, shared=False)
    x = m.embed(torch.cat([q[:, :, None], ctx], 2), slice(0, 4))      # [1, B, 4, d]
    _, attn = m.forward_full(q, ctx, return_attn=True)
    V = torch.einsum("kbpm,khmv->kbhpv", x, m.W_V)
    V_changed = V.clone()
    V_changed[:, :, :, 0] += 123.0
    z = torch.einsum("kbhq,kbhqv->kbhv", attn[:, :, :, 0], V)
    z_changed = torch.einsum("kbhq,kbhqv->kbhv", attn[:, :, :, 0], V_changed)
    assert torch.equal(z, z_changed)
    torch.testing.assert_close(m._readout(z), m.forward_query_row(q, ctx))


def test_batched_init_equals_alone_and_take():
    big = make(K=4, seeds=[10, 11, 12, 13])
    alone = make(K=1, seeds=[12])
    for (name, p), (_, p1) in zip(big.named_parameters(), alone.named_parameters()):
        assert torch.equal(p[2], p1[0]), name
    sub = big.take([2, 0])
    assert sub.K == 2 and torch.equal(sub.W_Q[0], big.W_Q[2]) and torch.equal(sub.W_U[1], big.W_U[0])
    q, ctx = inputs(1, 5, 5, 8, shared=True)
    torch.testing.assert_close(sub.take([0]).forward_query_row(q, ctx), alone.forward_query_row(q, ctx))


def test_padded_heads_match_a_smaller_model():
    padded = make(K=2, H=4, seeds=[5, 6], heads_active=[2, 4])
    small = make(K=1, H=2, seeds=[5])
    assert torch.equal(padded.W_Q[0, :2], small.W_Q[0]) and (padded.W_Q[0, 2:] == 0).all()
    q, ctx = inputs(2, 7, 5, 8, shared=False)
    out = padded.forward_query_row(q, ctx)
    torch.testing.assert_close(out[:1], small.forward_query_row(q[:1], ctx[:1]), rtol=1e-12, atol=1e-12)
    out.square().sum().backward()
    assert (padded.W_Q.grad[0, 2:] == 0).all() and (padded.W_O.grad[0, 2:] == 0).all()
    assert padded.W_Q.grad[1, 2:].abs().sum() > 0


def test_parameter_count_and_shapes():
    for H, d, dh, dv in [(20, 64, 64, 1), (60, 64, 64, 1), (30, 64, 32, 1), (3, 8, 4, 2)]:
        m = BatchedMHA(n_ctx=4, d_in=d, n_heads=H, d_head=dh, d_v=dv, n_out=10, generators=model_generators([0]))
        assert m.W_Q.shape == (1, H, d, dh) and m.W_V.shape == (1, H, d, dv) and m.W_O.shape == (1, H, dv, d)
        n_attn = sum(p[0].numel() for p in (m.W_Q, m.W_K, m.W_V, m.W_O))
        assert n_attn == attention_param_count(H, d, dh, dv) == H * (2 * d * dh + 2 * d * dv)
    assert attention_param_count(20, 64, 64) == 166_400
    assert attention_param_count(60, 64, 64) == 499_200
    assert attention_param_count(30, 64, 32) == 126_720


def test_sinusoidal_positions():
    pe = sinusoidal_positions(5, 6)
    assert pe.shape == (5, 6)
    assert pe[0, 0] == 0 and pe[0, 1] == 1
    assert abs(float(pe[3, 2]) - math.sin(3 / 10000 ** (2 / 6))) < 1e-6
    assert abs(float(pe[3, 5]) - math.cos(3 / 10000 ** (4 / 6))) < 1e-6
    assert sinusoidal_positions(4, 5).shape == (4, 5)                # odd width works


def test_init_bounds_follow_xavier_per_head():
    m = BatchedMHA(n_ctx=4, d_in=32, n_heads=8, d_head=16, n_out=100, generators=model_generators([1]))
    assert m.W_Q.abs().max() <= math.sqrt(6 / (32 + 16))
    assert m.W_V.abs().max() <= math.sqrt(6 / (32 + 1))
    assert m.W_O.abs().max() <= math.sqrt(6 / (8 + 32))
    assert m.W_O.abs().max() > 0.8 * math.sqrt(6 / (8 + 32))
    assert m.W_U.abs().max() <= 1 / math.sqrt(32)


def test_bad_arguments():
    with pytest.raises(ValueError, match="mask"):
        make(mask="v3")
    with pytest.raises(ValueError, match="score_scale"):
        make(score_scale="sqrt")
    with pytest.raises(ValueError, match="heads_active"):
        make(K=2, H=2, heads_active=[3, 1])


def test_row_softmax_matches_torch():
    x = torch.randn(3, 4, 7, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(_RowSoftmax.apply(x), torch.softmax(x, -1))
    assert torch.autograd.gradcheck(_RowSoftmax.apply, (x,))
    masked = x.detach().clone()
    masked[..., 0] = -math.inf
    y = _RowSoftmax.apply(masked)
    assert (y[..., 0] == 0).all() and torch.allclose(y.sum(-1), torch.ones(3, 4, dtype=torch.float64))

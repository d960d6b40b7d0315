"""Scan patterns against direct per-route constructions written independently (explicit loops over pixels)."""
import pytest
import torch

from vmamba.scans import get_scan_pattern, official_window_for_length

SIZES = [(1, 1), (1, 6), (5, 1), (3, 5), (4, 4), (7, 4), (6, 9)]


def cross_routes_by_loop(x):
    """The four official VMamba routes: row-major, column-major, and their full-sequence flips."""
    b, c, h, w = x.shape
    row = torch.stack([x[:, :, i, j] for i in range(h) for j in range(w)], -1)
    col = torch.stack([x[:, :, i, j] for j in range(w) for i in range(h)], -1)
    return [row, col, row.flip(-1), col.flip(-1)]


@pytest.mark.parametrize('size', SIZES)
def test_cross_orders_and_merge(size):
    x = torch.randn(2, 3, *size)
    pattern = get_scan_pattern('cross')
    xs, routes = pattern.scan(x)
    expected = cross_routes_by_loop(x)
    assert routes.reverse == (False, False, True, True)
    # routes 2, 3 hold the forward order; the kernel runs them reversed -> flip to compare with the official flip
    for k in range(4):
        got = xs[:, k].flip(-1) if routes.reverse[k] else xs[:, k]
        torch.testing.assert_close(got, expected[k], rtol=0, atol=0)
    # merge: each route's output, written back to where its input came from, summed
    ys = torch.randn_like(xs)
    merged = pattern.merge(ys, routes, *size)
    h, w = size
    ref = torch.zeros_like(x)
    for k in range(4):
        for step in range(h * w):
            i, j = (step // w, step % w) if k in (0, 2) else (step % h, step // h)
            ref[:, :, i, j] += ys[:, k, :, step]
    torch.testing.assert_close(merged, ref)


@pytest.mark.parametrize('size', SIZES)
def test_atrous_orders_padding_and_write_back(size):
    h, w = size
    x = torch.randn(2, 3, h, w)
    pattern = get_scan_pattern('atrous')
    xs, routes = pattern.scan(x)
    hp, wp = 2 * ((h + 1) // 2), 2 * ((w + 1) // 2)
    assert routes.padded_hw == (hp, wp)
    padded = torch.zeros(2, 3, hp, wp)
    padded[:, :, :h, :w] = x
    phases = [(0, 0, 'row'), (1, 0, 'col'), (0, 1, 'row'), (1, 1, 'col')]
    for k, (dr, dc, order) in enumerate(phases):
        rows, cols = range(dr, hp, 2), range(dc, wp, 2)
        if order == 'row':
            seq = [padded[:, :, r, cc] for r in rows for cc in cols]
        else:
            seq = [padded[:, :, r, cc] for cc in cols for r in rows]
        torch.testing.assert_close(xs[:, k], torch.stack(seq, -1), rtol=0, atol=0)
    ys = torch.randn_like(xs)
    merged = pattern.merge(ys, routes, h, w)
    ref = torch.zeros(2, 3, hp, wp)
    for k, (dr, dc, order) in enumerate(phases):
        rows, cols = list(range(dr, hp, 2)), list(range(dc, wp, 2))
        pos = [(r, cc) for r in rows for cc in cols] if order == 'row' else [(r, cc) for cc in cols for r in rows]
        for step, (r, cc) in enumerate(pos):
            ref[:, :, r, cc] = ys[:, k, :, step]
    torch.testing.assert_close(merged, ref[:, :, :h, :w], rtol=0, atol=0)


def test_bidirectional_and_local_bidirectional():
    x = torch.randn(2, 3, 1, 11)  # a token sequence as a (1, L) map
    xs, routes = get_scan_pattern('bidirectional').scan(x)
    assert routes.reverse == (False, True)
    torch.testing.assert_close(xs[:, 0], x.flatten(2))
    torch.testing.assert_close(xs[:, 1], x.flatten(2))
    lb = get_scan_pattern('local_bidirectional')
    xs, routes = lb.scan(torch.randn(1, 2, 14, 14))
    assert routes.local_window == 8 and routes.num_routes == 1
    assert get_scan_pattern('local_bidirectional', window=5).routes(3, 3).local_window == 5


def test_official_lb_window_table():
    assert [official_window_for_length(n) for n in (1, 128, 129, 256, 257, 1024, 4096)] == [4, 4, 8, 8, 16, 16, 16]


def test_merge_is_adjoint_of_scan():
    """<scan(x), y> == <x, merge(y)> for every pattern: merge is exactly the transpose of the gather."""
    for name in ('cross', 'bidirectional', 'local_bidirectional', 'atrous'):
        pattern = get_scan_pattern(name)
        x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
        xs, routes = pattern.scan(x)
        ys = torch.randn_like(xs)
        lhs = (xs * ys).sum()
        rhs = (x * pattern.merge(ys, routes, 5, 6)).sum()
        torch.testing.assert_close(lhs, rhs)


def test_errors():
    with pytest.raises(ValueError, match='unknown scan pattern'):
        get_scan_pattern('zigzag')
    with pytest.raises(ValueError, match=r'\(batch, C, H, W\)'):
        get_scan_pattern('cross').scan(torch.randn(3, 4, 5))
    with pytest.raises(ValueError, match='window must be'):
        get_scan_pattern('local_bidirectional', window=0)


def test_routes_cached_under_inference_mode_serve_training():
    pattern = get_scan_pattern('cross')
    with torch.inference_mode():
        pattern.scan(torch.randn(1, 2, 3, 4))
    x = torch.randn(1, 2, 3, 4, requires_grad=True)
    xs, routes = pattern.scan(x)
    pattern.merge(xs, routes, 3, 4).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 4.0))


@pytest.mark.parametrize('name', ['cross', 'atrous', 'bidirectional'])
def test_scan_and_merge_gradients(name):
    """Custom backward of scan/merge (gathers, no atomics) against gradcheck."""
    pattern = get_scan_pattern(name)
    x = torch.randn(1, 2, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: pattern.scan(t)[0], (x,))
    xs, routes = pattern.scan(x.detach())
    ys = torch.randn_like(xs).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: pattern.merge(t, routes, 3, 5), (ys,))

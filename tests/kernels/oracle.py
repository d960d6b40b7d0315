"""Step-by-step selective-scan oracle for the tests: one Python loop over time, written independently of the
chunked closed form in vmamba/kernels/reference.py. Slow; only for small shapes."""
import torch
import torch.nn.functional as F


def selective_scan_loop(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                        reverse=False, local_window=None, return_last_state=False):
    """Same semantics as vmamba.kernels.selective_scan; computes in float64. Returns float64 tensors."""
    batch, channels, length = u.shape
    groups = B.shape[1]
    per_group = channels // groups
    if isinstance(reverse, bool):
        reverse = (reverse,) * groups
    u, delta, A = u.double(), delta.double(), A.double()
    B, C = B.double(), C.double()
    dt = delta + (delta_bias.double()[:, None] if delta_bias is not None else 0.0)
    if delta_softplus:
        dt = torch.where(dt > 20, dt, torch.log1p(torch.exp(dt)))
    out = torch.zeros(batch, channels, length, dtype=torch.float64)
    last = torch.zeros(batch, channels, A.shape[1], dtype=torch.float64)
    for c in range(channels):
        g = c // per_group
        order = list(range(length))[::-1] if reverse[g] else list(range(length))
        a = torch.exp(dt[:, c, :, None] * A[c][None, None, :])  # (b, L, n)
        x = (dt[:, c] * u[:, c])[:, :, None] * B[:, g].transpose(1, 2)  # (b, L, n)
        h_left = torch.zeros(batch, length, A.shape[1], dtype=torch.float64)
        h = torch.zeros(batch, A.shape[1], dtype=torch.float64)
        for t in order:
            h = a[:, t] * h + x[:, t]
            h_left[:, t] = h
        last[:, c] = h
        h_total = h_left.clone()
        if local_window:
            # backward recursion inside each window of the scan order
            for w0 in range(0, length, local_window):
                window = order[w0:w0 + local_window]
                h_r = torch.zeros(batch, A.shape[1], dtype=torch.float64)
                for t in reversed(window):
                    h_r = a[:, t] * h_r + x[:, t]
                    h_total[:, t] += h_r - x[:, t]
        y = (h_total * C[:, g].transpose(1, 2)).sum(-1)
        if D is not None:
            y = y + D.double()[c] * u[:, c]
        if z is not None:
            y = y * F.silu(z[:, c].double())
        out[:, c] = y
    return (out, last) if return_last_state else out

"""The torchvision-backed mmcv ops against independent references: a direct bilinear-sampling RoIAlign and a greedy
NMS written here; and the tools' exit message when mmcv's compiled ops are missing."""
import math

import pytest
import torch

pytest.importorskip('mmcv')
pytest.importorskip('torchvision')
compat = pytest.importorskip('vmamba.adapters.mmcv_ops_compat')


def _bilinear(feature, y, x):
    """feature (C, H, W) sampled at (y, x) with the RoIAlign border rules (zero outside [-1, H], clamp inside)."""
    height, width = feature.shape[-2:]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return feature.new_zeros(feature.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    if y0 >= height - 1:
        y0 = y1 = height - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * feature[:, y0, x0] + hy * lx * feature[:, y0, x1]
            + ly * hx * feature[:, y1, x0] + ly * lx * feature[:, y1, x1])


def reference_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned):
    """Average of bilinear samples on a regular grid in each bin (Mask R-CNN RoIAlign), one RoI at a time."""
    out_h, out_w = output_size
    out = features.new_zeros(rois.shape[0], features.shape[1], out_h, out_w)
    offset = 0.5 if aligned else 0.0
    for k, (batch_index, x1, y1, x2, y2) in enumerate(rois.tolist()):
        feature = features[int(batch_index)]
        x1, y1, x2, y2 = (v * spatial_scale - offset for v in (x1, y1, x2, y2))
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / out_h, roi_w / out_w
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / out_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / out_w)
        count = max(grid_h * grid_w, 1)
        for ph in range(out_h):
            for pw in range(out_w):
                acc = feature.new_zeros(feature.shape[0])
                for iy in range(grid_h):
                    y = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = x1 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        acc = acc + _bilinear(feature, y, x)
                out[k, :, ph, pw] = acc / count
    return out


def reference_nms(boxes, scores, iou_threshold, offset=0):
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep = []
    for i in order:
        suppressed = False
        for j in keep:
            xx1, yy1 = max(boxes[i][0], boxes[j][0]), max(boxes[i][1], boxes[j][1])
            xx2, yy2 = min(boxes[i][2], boxes[j][2]), min(boxes[i][3], boxes[j][3])
            inter = max(xx2 - xx1 + offset, 0) * max(yy2 - yy1 + offset, 0)
            area_i = (boxes[i][2] - boxes[i][0] + offset) * (boxes[i][3] - boxes[i][1] + offset)
            area_j = (boxes[j][2] - boxes[j][0] + offset) * (boxes[j][3] - boxes[j][1] + offset)
            if inter / (area_i + area_j - inter) > iou_threshold:
                suppressed = True
                break
        if not suppressed:
            keep.append(i)
    return keep


def _random_rois(generator, num, batch, size):
    xy = torch.rand(num, 2, generator=generator, dtype=torch.float64) * size * 0.8 - 2
    wh = torch.rand(num, 2, generator=generator, dtype=torch.float64) * size * 0.6 + 0.5
    index = torch.randint(0, batch, (num, 1), generator=generator).double()
    return torch.cat([index, xy, xy + wh], dim=1)


@pytest.mark.parametrize('aligned,sampling_ratio,spatial_scale', [(True, 0, 0.5), (False, 2, 0.25), (True, 1, 1.0)])
def test_roi_align_matches_bilinear_reference(aligned, sampling_ratio, spatial_scale):
    from mmcv.ops import roi_align

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 12, 14, generator=generator, dtype=torch.float64)
    rois = _random_rois(generator, 7, 2, 14 / spatial_scale)
    expected = reference_roi_align(features, rois, (3, 4), spatial_scale, sampling_ratio, aligned)
    actual = roi_align(features, rois, (3, 4), spatial_scale, sampling_ratio, 'avg', aligned)
    assert actual.abs().sum() > 0
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


def test_roi_align_backward_matches_reference_gradient():
    from mmcv.ops import RoIAlign

    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2, 2, 9, 10, generator=generator, dtype=torch.float64)
    rois = _random_rois(generator, 5, 2, 20)
    weight = torch.randn(5, 2, 2, 3, generator=generator, dtype=torch.float64)

    features_ref = features.clone().requires_grad_(True)
    (reference_roi_align(features_ref, rois, (2, 3), 0.5, 0, True) * weight).sum().backward()
    features_op = features.clone().requires_grad_(True)
    (RoIAlign((2, 3), 0.5, 0, aligned=True)(features_op, rois) * weight).sum().backward()
    assert features_op.grad.abs().sum() > 0
    torch.testing.assert_close(features_op.grad, features_ref.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('offset', [0, 1])
def test_nms_matches_greedy_reference(offset):
    from mmcv.ops import batched_nms, nms

    generator = torch.Generator().manual_seed(2)
    xy = torch.rand(60, 2, generator=generator) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(60, 2, generator=generator) * 20], dim=1)
    scores = torch.rand(60, generator=generator)
    dets, keep = nms(boxes, scores, 0.4, offset=offset)
    expected = reference_nms(boxes.tolist(), scores.tolist(), 0.4, offset)
    assert 1 < len(expected) < 60
    assert keep.tolist() == expected
    torch.testing.assert_close(dets[:, 4], scores[keep])

    labels = torch.randint(0, 3, (60,), generator=generator)
    _, keep = batched_nms(boxes, scores, labels, dict(type='nms', iou_threshold=0.4))
    expected = sorted((i for c in range(3) for i in [
        int(torch.nonzero(labels == c)[k]) for k in reference_nms(
            boxes[labels == c].tolist(), scores[labels == c].tolist(), 0.4)]), key=lambda i: -float(scores[i]))
    assert keep.tolist() == expected


def test_other_ops_raise_naming_the_op():
    from mmcv.ops import RoIAlign, sigmoid_focal_loss

    assert compat.is_active() or not compat.activate()
    if not compat.is_active():
        pytest.skip('compiled mmcv ops are installed; the stand-in is not used')
    with pytest.raises(compat.MmcvOpUnavailableError, match='sigmoid_focal_loss_forward'):
        sigmoid_focal_loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(compat.MmcvOpUnavailableError, match="pool_mode='max'"):
        RoIAlign(2, 1.0, pool_mode='max')(torch.randn(1, 1, 4, 4), torch.tensor([[0., 0., 0., 3., 3.]]))


def test_missing_compiled_ops_exit_names_the_fixes():
    from vmamba.adapters.cli import explain_missing_mmcv_ops

    with pytest.raises(SystemExit, match=r'--mmcv-ops-compat .* mmcv==2\.1\.0'):
        with explain_missing_mmcv_ops():
            raise ModuleNotFoundError("No module named 'mmcv._ext'", name='mmcv._ext')
    with pytest.raises(ModuleNotFoundError, match='other_module'):  # anything else passes through unchanged
        with explain_missing_mmcv_ops():
            raise ModuleNotFoundError("No module named 'other_module'", name='other_module')

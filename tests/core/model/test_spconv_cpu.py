"""spconv forward and backward on CPU-only torch, checked against dense torch convolutions."""
import torch
import torch.nn.functional as F

from gcross_core.model.encoder import spconv


def _dense_weight(w):
    # spconv 2 stores [out, kD, kH, kW, in]; torch dense conv wants [out, in, kD, kH, kW]
    return w.permute(0, 4, 1, 2, 3).contiguous()


def _dense_weight_t(w):
    # conv_transpose3d wants [in, out, kD, kH, kW]; spconv's inverse conv keeps [out, k.., in]
    return w.permute(4, 0, 1, 2, 3).contiguous()


def _scene(seed, size=8, n=120, c=5):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, size, (n, 3), generator=g)
    idx = torch.unique(idx, dim=0).int()
    idx = torch.cat([torch.zeros(len(idx), 1, dtype=torch.int32), idx], 1)
    feat = torch.randn(len(idx), c, generator=g)
    return idx, feat


def _to_dense(feat, idx, size):
    d = torch.zeros(1, feat.shape[1], size, size, size, dtype=feat.dtype)
    d[0, :, idx[:, 1].long(), idx[:, 2].long(), idx[:, 3].long()] = feat.T
    return d


def _gather(dense, idx):
    return dense[0, :, idx[:, 1].long(), idx[:, 2].long(), idx[:, 3].long()].T


def test_subm_sparse_inverse_forward_backward_match_dense():
    torch.manual_seed(0)
    size = 8
    idx, feat = _scene(0, size)
    subm = spconv.SubMConv3d(5, 6, 3, bias=False, indice_key="subm1")
    down = spconv.SparseConv3d(6, 7, 2, stride=2, bias=False, indice_key="down1")
    up = spconv.SparseInverseConv3d(7, 4, 2, bias=False, indice_key="down1")

    x_sp = feat.clone().requires_grad_(True)
    t = spconv.SparseConvTensor(x_sp, idx, [size] * 3, 1)
    y1 = subm(t)
    y2 = down(y1)
    y3 = up(y2)
    cot = torch.randn(y3.features.shape)
    (y3.features * cot).sum().backward()

    # Dense equivalent: submanifold conv = dense conv read at the active sites, with inactive inputs 0;
    # strided conv = dense strided conv read at the output sites; inverse = transposed conv read back
    # at the original sites.
    x_d = feat.clone().requires_grad_(True)
    w1 = subm.weight.detach().clone().requires_grad_(True)
    w2 = down.weight.detach().clone().requires_grad_(True)
    w3 = up.weight.detach().clone().requires_grad_(True)
    d1 = F.conv3d(_to_dense(x_d, idx, size), _dense_weight(w1), padding=1)
    f1 = _gather(d1, idx)
    d2 = F.conv3d(_to_dense(f1, idx, size), _dense_weight(w2), stride=2)
    f2 = _gather(d2, y2.indices)
    d3 = F.conv_transpose3d(_to_dense(f2, y2.indices, size // 2), _dense_weight_t(w3), stride=2)
    f3 = _gather(d3, idx)

    assert torch.equal(y3.indices, idx) or torch.equal(
        torch.unique(y3.indices, dim=0), torch.unique(idx, dim=0))
    # align rows in case spconv reorders the output sites
    order = {tuple(r.tolist()): i for i, r in enumerate(idx)}
    perm = torch.tensor([order[tuple(r.tolist())] for r in y3.indices])
    torch.testing.assert_close(y3.features, f3[perm], atol=1e-4, rtol=1e-4)
    (f3[perm] * cot).sum().backward()
    torch.testing.assert_close(x_sp.grad, x_d.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(subm.weight.grad, w1.grad, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(down.weight.grad, w2.grad, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(up.weight.grad, w3.grad, atol=1e-3, rtol=1e-4)

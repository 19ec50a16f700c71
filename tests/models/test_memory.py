import pytest
import torch
import torch.nn.functional as F

from mmnet_plugin.models import read_memory, write_memory


def _write_one(vectors, labels, slots=None):
    zk = torch.tensor(vectors, dtype=torch.float32).unsqueeze(0)
    y = torch.tensor(labels).unsqueeze(0)
    return write_memory(zk, y, torch.tensor([len(labels)]), slots)


def test_first_item_opens_normalised_slot():
    mem = _write_one([[3.0, 4.0, 0.0]], [2])
    assert mem.n_used.tolist() == [1]
    assert mem.labels.tolist() == [[2]]
    assert torch.allclose(mem.keys[0, 0], torch.tensor([0.6, 0.8, 0.0]))


def test_same_label_nearest_merges_and_normalises():
    v1, v2 = [1.0, 0.0, 0.0], [0.9, 0.3, 0.0]
    mem = _write_one([v1, v2], [0, 0])
    assert mem.n_used.tolist() == [1]
    assert mem.used.tolist() == [[True, False]]
    expected = F.normalize(F.normalize(torch.tensor(v1), dim=0) + torch.tensor(v2), dim=0)  # Eq. 4
    assert torch.allclose(mem.keys[0, 0], expected)
    assert torch.allclose(mem.keys[0, 0].norm(), torch.tensor(1.0))
    assert torch.equal(mem.keys[0, 1], torch.zeros(3))
    assert mem.labels.tolist() == [[0, -1]]


def test_other_label_opens_slot():
    mem = _write_one([[1.0, 0.0], [0.0, 2.0]], [0, 1])
    assert mem.n_used.tolist() == [2]
    assert mem.labels.tolist() == [[0, 1]]
    assert torch.allclose(mem.keys[0], torch.eye(2))


def test_only_the_nearest_slot_decides():
    # the nearest key (slot 0, label 0) has another label: a new slot opens even though
    # slot 1 already holds label 1
    mem = _write_one([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]], [0, 1, 1])
    assert mem.n_used.tolist() == [3]
    assert mem.labels.tolist() == [[0, 1, 1]]
    # nearest with the same label merges into that slot, not another
    mem = _write_one([[1.0, 0.0], [0.0, 1.0], [0.2, 0.9]], [0, 1, 1])
    assert mem.n_used.tolist() == [2]
    assert mem.labels[0, :2].tolist() == [0, 1]
    assert torch.allclose(mem.keys[0, 1], F.normalize(torch.tensor([0.2, 1.9]), dim=0))


def test_full_memory_merges_into_nearest_whatever_the_label():
    mem = _write_one([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]], [0, 1, 2], slots=2)
    assert mem.keys.shape == (1, 2, 2)
    assert mem.n_used.tolist() == [2]
    assert mem.labels.tolist() == [[0, 1]]  # the slot keeps its label
    assert torch.allclose(mem.keys[0, 0], F.normalize(torch.tensor([1.9, 0.1]), dim=0))
    assert torch.allclose(mem.keys[0, 1], torch.tensor([0.0, 1.0]))


def test_batch_equals_episodes_one_by_one():
    g = torch.Generator().manual_seed(0)
    lengths = [3, 9, 1, 6]
    n, dm = max(lengths), 8
    zk = torch.randn(len(lengths), n, dm, generator=g)
    labels = torch.randint(0, 3, (len(lengths), n), generator=g)
    for slots in (None, 3):
        batched = write_memory(zk, labels, torch.tensor(lengths), slots)
        for b, length in enumerate(lengths):
            one = write_memory(zk[b : b + 1, :length], labels[b : b + 1, :length], torch.tensor([length]), slots)
            m = one.keys.shape[1]
            assert batched.n_used[b] == one.n_used[0]
            assert torch.equal(batched.labels[b, :m], one.labels[0])
            assert torch.equal(batched.used[b, :m], one.used[0])
            assert torch.allclose(batched.keys[b, :m], one.keys[0], atol=1e-6)
            assert not batched.used[b, m:].any()
            assert (batched.labels[b, m:] == -1).all()
            if slots is not None:
                assert int(one.n_used[0]) <= slots


def test_gradients_flow_through_keys_and_padding_is_ignored():
    zk = torch.randn(2, 5, 4, requires_grad=True)
    labels = torch.tensor([[0, 1, 0, 1, 0], [0, 0, 1, 1, 1]])
    mem = write_memory(zk, labels, torch.tensor([5, 3]))
    (mem.keys * torch.randn_like(mem.keys)).sum().backward()
    assert torch.isfinite(zk.grad).all()
    assert zk.grad[0].abs().sum() > 0
    assert torch.equal(zk.grad[1, 3:], torch.zeros(2, 4))  # padding gets no gradient


def test_write_rejects_bad_inputs():
    zk = torch.randn(1, 2, 4)
    with pytest.raises(ValueError, match="slots"):
        write_memory(zk, torch.zeros(1, 2, dtype=torch.long), torch.tensor([2]), slots=0)
    with pytest.raises(ValueError, match="labels"):
        write_memory(zk, torch.zeros(1, 3, dtype=torch.long), torch.tensor([2]))


def test_read_controller_attends_over_used_slots_only():
    g = torch.Generator().manual_seed(1)
    zk = torch.randn(2, 4, 6, generator=g)
    keys = torch.randn(2, 3, 6, generator=g)
    used = torch.tensor([[True, True, False], [True, True, True]])
    c = read_memory(zk, keys, used)
    assert c.shape == (2, 4, 6)
    for b in range(2):
        k = keys[b, used[b]]
        a = torch.softmax(zk[b] @ k.T, dim=1)  # Eq. 5
        assert torch.allclose(c[b], a @ k, atol=1e-5)  # c = sum_i a_i m_i


def _write_per_item(zk, labels, lengths, slots=None, eps=1e-12):
    """The write controller as first written: one differentiable step per support item over all
    slots (the reference the two-pass implementation must equal)."""
    b, n, _ = zk.shape
    width, capacity = (n, lengths) if slots is None else (min(slots, n), torch.full_like(lengths, slots))
    keys = zk.new_zeros(b, width, zk.shape[2])
    slot_labels = labels.new_full((b, width), -1)
    used = torch.zeros(b, width, dtype=torch.bool)
    n_used = torch.zeros(b, dtype=torch.long)
    positions, batch = torch.arange(width), torch.arange(b)
    for t in range(n):
        active, z, y = lengths > t, zk[:, t], labels[:, t]
        with torch.no_grad():
            sim = torch.bmm(keys.detach(), z.detach().unsqueeze(2)).squeeze(2)
            nearest = torch.where(used, sim, torch.tensor(float("-inf"))).argmax(dim=1)
        merge = (n_used > 0) & ((slot_labels[batch, nearest] == y) | (n_used >= capacity))
        target = torch.where(merge, nearest, n_used.clamp(max=width - 1))
        onehot = (positions.unsqueeze(0) == target.unsqueeze(1)) & active.unsqueeze(1)
        merged = F.normalize(keys[batch, nearest] + z, dim=1, eps=eps)
        new_key = torch.where(merge.unsqueeze(1), merged, F.normalize(z, dim=1, eps=eps))
        keys = torch.where(onehot.unsqueeze(2), new_key.unsqueeze(1), keys)
        opened = onehot & ~merge.unsqueeze(1)
        slot_labels = torch.where(opened, y.unsqueeze(1), slot_labels)
        used = used | opened
        n_used = n_used + (active & ~merge).long()
    return keys, slot_labels, used, n_used


@pytest.mark.parametrize("slots", [None, 3, 7])
def test_two_pass_write_equals_one_step_per_item(slots):
    """Same keys, labels and gradients as the one-step-per-item controller, on a padded batch
    whose episodes have clustered keys (merges) and ragged lengths."""
    g = torch.Generator().manual_seed(3)
    b, n, dm = 6, 40, 16
    lengths = torch.tensor([40, 1, 13, 27, 40, 8])
    labels = torch.randint(0, 8, (b, n), generator=g)
    centres = torch.randn(8, dm, generator=g)
    base = (centres[labels] + 0.6 * torch.randn(b, n, dm, generator=g)).requires_grad_(True)
    weights = torch.randn(b, n if slots is None else min(slots, n), dm, generator=g)
    mem = write_memory(base, labels, lengths, slots)
    (grad,) = torch.autograd.grad((mem.keys * weights).sum(), base)
    ref_keys, ref_labels, ref_used, ref_n = _write_per_item(base, labels, lengths, slots)
    (ref_grad,) = torch.autograd.grad((ref_keys * weights).sum(), base)
    assert torch.equal(mem.labels, ref_labels) and torch.equal(mem.used, ref_used)
    assert torch.equal(mem.n_used, ref_n)
    assert mem.n_used.max() < lengths.max()  # some items merged: the fold is exercised
    torch.testing.assert_close(mem.keys, ref_keys, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)

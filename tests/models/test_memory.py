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

"""The labelled key queue against a plain Python deque model of a FIFO with a maximum length."""

from __future__ import annotations

import io
from collections import deque

import pytest
import torch

from mlcdist.queue import LabelledKeyQueue

DIM, C = 3, 5


def ordered_contents(q: LabelledKeyQueue) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid (key, label) rows from oldest to newest: slots ptr, ptr+1, ... (mod size)."""
    order = (int(q.ptr) + torch.arange(q.size)) % q.size
    order = order[q.valid[order]]
    return q.keys[order], q.labels[order]


def batch(start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys whose first entry is a running id; labels are a deterministic function of the id."""
    ids = torch.arange(start, start + n, dtype=torch.float32)
    keys = torch.stack([ids, -ids, ids * 0.5], dim=1)
    labels = ((ids.long()[:, None] * 7 + torch.arange(C)) % 3 == 0).float()
    return keys, labels


@pytest.mark.parametrize("size", [1, 5, 7, 16])
@pytest.mark.parametrize("label_dtype", [torch.bool, torch.uint8])
def test_matches_deque_reference_across_wraparound(size, label_dtype):
    q = LabelledKeyQueue(size, DIM, C, label_dtype=label_dtype)
    ref: deque = deque(maxlen=size)
    next_id = 0
    for n in [3, 4, 1, 9, 2, 20, 5, 6, 0, 7, 33, 2]:  # includes > size and non-divisible sizes
        keys, labels = batch(next_id, n)
        next_id += n
        q.enqueue_(keys, labels)
        ref.extend(zip(keys, labels))
        got_keys, got_labels = ordered_contents(q)
        assert got_keys.shape[0] == len(ref)
        if ref:
            assert torch.equal(got_keys, torch.stack([k for k, _ in ref]))
            assert torch.equal(got_labels, torch.stack([l for _, l in ref]).to(label_dtype))
        assert got_labels.dtype == label_dtype
        assert int(q.ptr) == next_id % size


def test_invalid_until_written_and_fill_fraction():
    q = LabelledKeyQueue(10, DIM, C)
    assert not q.valid.any() and float(q.fill_fraction()) == 0.0
    q.enqueue_(*batch(0, 4))
    assert q.valid.tolist() == [True] * 4 + [False] * 6
    assert isinstance(q.fill_fraction(), torch.Tensor)
    assert float(q.fill_fraction()) == pytest.approx(0.4)
    q.enqueue_(*batch(4, 7))  # wraps: slots 4..9 then 0
    assert q.valid.all() and float(q.fill_fraction()) == 1.0
    assert int(q.ptr) == 1


def test_batch_larger_than_queue_keeps_newest_in_sequential_slots():
    q = LabelledKeyQueue(4, DIM, C)
    q.enqueue_(*batch(0, 1))  # ptr = 1
    q.enqueue_(*batch(1, 10))  # ids 1..10; newest four (7..10) land where one-by-one writes would
    assert q.keys[:, 0].tolist() == [8.0, 9.0, 10.0, 7.0]
    assert int(q.ptr) == 3


def test_state_round_trip_is_weights_only_loadable():
    q = LabelledKeyQueue(6, DIM, C)
    q.enqueue_(*batch(0, 8))
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    r = LabelledKeyQueue(6, DIM, C)
    r.load_state_dict(state)
    for name in ("keys", "labels", "valid", "ptr"):
        assert torch.equal(getattr(r, name), getattr(q, name))
    # the copy is independent of the live queue
    q.enqueue_(*batch(8, 3))
    assert not torch.equal(r.keys, q.keys)
    # and both continue identically
    r.enqueue_(*batch(8, 3))
    assert torch.equal(r.keys, q.keys) and torch.equal(r.ptr, q.ptr)


def test_state_mismatch_is_a_clear_error():
    state = LabelledKeyQueue(6, DIM, C).state_dict()
    with pytest.raises(ValueError, match="queue.size=8"):
        LabelledKeyQueue(8, DIM, C).load_state_dict(state)
    with pytest.raises(ValueError, match="missing"):
        LabelledKeyQueue(6, DIM, C).load_state_dict({"keys": state["keys"]})


def test_size_zero_is_disabled():
    q = LabelledKeyQueue(0, DIM, C)
    q.enqueue_(*batch(0, 5))
    keys, labels, valid = q.candidates()
    assert keys.shape == (0, DIM) and labels.shape == (0, C) and valid.shape == (0,)
    assert float(q.fill_fraction()) == 0.0
    assert torch.equal(q.state_dict()["ptr"], torch.tensor(0))


def test_bad_shapes_are_rejected():
    q = LabelledKeyQueue(4, DIM, C)
    with pytest.raises(ValueError, match=r"keys must be \(n, 3\)"):
        q.enqueue_(torch.zeros(2, DIM + 1), torch.zeros(2, C))
    with pytest.raises(ValueError, match="labels must be"):
        q.enqueue_(torch.zeros(2, DIM), torch.zeros(3, C))


def test_candidates_concatenate_after_batch_keys():
    q = LabelledKeyQueue(5, DIM, C)
    q.enqueue_(*batch(0, 2))
    keys, labels, valid = q.candidates()
    cur, _ = batch(100, 3)
    all_keys = torch.cat([cur, keys])
    all_valid = torch.cat([torch.ones(3, dtype=torch.bool), valid])
    assert all_keys[all_valid][:, 0].tolist() == [100.0, 101.0, 102.0, 0.0, 1.0]

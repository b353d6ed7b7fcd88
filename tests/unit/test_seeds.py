"""Every seed scheme keeps its values: a change would silently change data order, views and
shuffle-BN permutations, and break exact resume of runs started before it."""

from __future__ import annotations

import torch

from mlcdist import seeds


def test_mix_seed_values_are_pinned():
    assert seeds.mix_seed(0) == 6375474604893067239
    assert seeds.mix_seed(7, 3, 1, 2, 0x5B) == 5929930293950433494
    assert seeds.mix_seed(2**40, -1) == 2564026834014808858  # parts are taken mod 2**32


def test_splitmix64_values_are_pinned():
    x = torch.tensor([0, 1, -1, 2**62], dtype=torch.int64)
    # splitmix64(0) is the reference generator's first output, 0xE220A8397B1DCDAF, as int64
    assert seeds.splitmix64(x).tolist() == [-2152535657050944081, -7995527694508729151,
                                           -1956407806741107680, 47939714376772075]


def test_sample_seeds_values_are_pinned():
    got = seeds.sample_seeds(7, 3, torch.tensor([0, 5, 1000]), torch.tensor([0, 1, 2]))
    assert got.tolist() == [3827544751006511609, 2553167851873761853, 3588812130557185060]
    assert seeds.sample_seeds(0, 0, torch.tensor([0])).tolist() == [2391539541053276776]


def test_epoch_and_step_seeds_are_pinned():
    assert seeds.epoch_seed(7, 3) == 7_000_024
    assert seeds.step_seed(7, 100, 3) == 7_791_924


def test_old_homes_use_the_same_functions():
    from mlcdist.data import augment, plan

    assert plan.mix_seed is seeds.mix_seed and augment.splitmix64 is seeds.splitmix64


def test_splitmix64_numpy_path_equals_the_torch_path():
    """CPU tensors hash in NumPy (uint64), device tensors in torch (int64 with masked shifts):
    the same bits for any input, including a non-contiguous one, a 0-d one and the extremes."""
    g = torch.Generator().manual_seed(0)
    full = torch.randint(-2**63, 2**63 - 1, (257, 131), dtype=torch.int64, generator=g)
    extremes = torch.tensor([0, 1, -1, 2**63 - 1, -2**63], dtype=torch.int64)
    for x in (full, full.T, full[::3, 1::2], extremes, torch.tensor(12345)):
        before = x.clone()
        got = seeds.splitmix64(x)
        assert got.dtype == torch.int64 and got.shape == x.shape
        assert torch.equal(got, seeds._splitmix64_torch(x))
        assert torch.equal(x, before)  # the input is left as it was


def test_splitmix64_row_blocks_cover_the_hash_of_the_broadcast_sum():
    g = torch.Generator().manual_seed(1)
    rows = torch.randint(0, 2**63 - 1, (37,), dtype=torch.int64, generator=g)
    columns = torch.arange(1, 101, dtype=torch.int64) * seeds.GOLDEN  # the masks' feature offsets
    expected = seeds._splitmix64_torch(rows[:, None] + columns[None, :])
    for block_elements in (1, 250, 1000, 10**6):  # one row a block, 2, 10, all 37 rows
        got = torch.empty_like(expected)
        spans = []
        for span, block in seeds.splitmix64_row_blocks(rows, columns, block_elements):
            got[span] = torch.from_numpy(block.copy())
            spans.append((span.start, span.stop))
        assert torch.equal(got, expected)
        assert spans[0][0] == 0 and spans[-1][1] == 37
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))

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

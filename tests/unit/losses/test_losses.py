"""The dense loss family against a slow loop written straight from the paper's equations."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from mlcdist.losses import multilabel_supcon, multilabel_supcon_terms


def reference(q, k, yq, yk, tau, positives, valid):
    """Eq. (1), (4)+(5) and (6), one anchor, one label, one positive at a time, in float64.

    Returns (loss, dloss/dq, dloss/dk); with nothing to learn from the loss is the constant 0.
    """
    q = q.detach().double().requires_grad_()
    k = k.detach().double().requires_grad_()
    B, N = q.shape[0], k.shape[0]
    cands = [m for m in range(N) if valid[m]]
    total, count = q.new_zeros(()), 0
    for i in range(B):
        labels_i = {j for j in range(yq.shape[1]) if yq[i, j]}
        if not labels_i:
            continue
        s = torch.stack([q[i] @ k[a] for a in cands]) / tau
        log_prob = dict(zip(cands, s - torch.logsumexp(s, 0)))
        sets = {m: {j for j in range(yk.shape[1]) if yk[m, j]} for m in cands}
        if positives in ("mulsupcon", "weighted"):
            terms = []
            for j in labels_i:
                P = [m for m in cands if j in sets[m]]
                if P:
                    terms.append(-sum(log_prob[p] for p in P) / len(P))
            if positives == "mulsupcon":
                total = total + sum(terms, q.new_zeros(()))
                count += len(terms)
            elif terms:
                total = total + sum(terms) / len(terms)
                count += 1
        else:
            P = ([m for m in cands if sets[m] == labels_i] if positives == "all"
                 else [m for m in cands if sets[m] & labels_i])
            if P:
                total = total - sum(log_prob[p] for p in P) / len(P)
                count += 1
    if count == 0:
        return 0.0, torch.zeros_like(q), torch.zeros_like(k)
    loss = total / count
    loss.backward()
    return loss.item(), q.grad, k.grad


def random_case(seed, B, N, C, D=8, density=0.3, empty_frac=0.2, invalid_frac=0.2):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, D, generator=g), dim=1)
    k = F.normalize(torch.randn(N, D, generator=g), dim=1)
    yq = (torch.rand(B, C, generator=g) < density)
    yk = (torch.rand(N, C, generator=g) < density)
    yq[torch.rand(B, generator=g) < empty_frac] = False
    yk[torch.rand(N, generator=g) < empty_frac] = False
    # share some exact label sets so ALL has positives
    yk[: min(B, N) // 2] = yq[: min(B, N) // 2]
    valid = torch.rand(N, generator=g) >= invalid_frac
    return q, k, yq, yk, valid


CASES = [(0, 5, 9, 1), (1, 6, 6, 3), (2, 4, 11, 7), (3, 7, 5, 20), (4, 3, 13, 400)]


@pytest.mark.parametrize("positives", ["mulsupcon", "weighted", "all", "any"])
@pytest.mark.parametrize("seed,B,N,C", CASES)
def test_matches_loop_reference_values_and_grads(positives, seed, B, N, C):
    q, k, yq, yk, valid = random_case(seed, B, N, C)
    tau = 0.2
    qd = q.double().requires_grad_()
    kd = k.double().requires_grad_()
    loss = multilabel_supcon(qd, kd, yq, yk, tau, positives, key_valid=valid)
    expected, gq, gk = reference(q, k, yq, yk, tau, positives, valid)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    if loss.requires_grad:
        loss.backward()
    torch.testing.assert_close(qd.grad if qd.grad is not None else torch.zeros_like(gq), gq, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(kd.grad if kd.grad is not None else torch.zeros_like(gk), gk, rtol=1e-4, atol=1e-6)


def test_single_label_reduces_to_supcon_for_every_variant():
    g = torch.Generator().manual_seed(7)
    B, N, C = 8, 12, 4
    q = F.normalize(torch.randn(B, 16, generator=g), dim=1)
    k = F.normalize(torch.randn(N, 16, generator=g), dim=1)
    cq = torch.randint(0, C, (B,), generator=g)
    ck = torch.randint(0, C, (N,), generator=g)
    ck[:B] = cq  # every anchor has a positive
    yq, yk = F.one_hot(cq, C), F.one_hot(ck, C)
    # SupCon (Khosla et al.) with keys as candidates: mean over anchors of mean -log p over positives
    log_prob = torch.log_softmax(q @ k.T / 0.1, dim=1)
    pos = (cq[:, None] == ck[None, :]).float()
    supcon = (-(pos * log_prob).sum(1) / pos.sum(1)).mean()
    for positives in ("mulsupcon", "weighted", "all", "any"):
        got = multilabel_supcon(q, k, yq, yk, 0.1, positives)
        torch.testing.assert_close(got, supcon, rtol=1e-5, atol=1e-6)


def test_paper_figure2_positive_sets():
    # anchor labels {1, 3} (0-based {0, 2}); P_1 = {1,3,6}, P_3 = {1,2,3,4,6} of figure 2
    yk = torch.zeros(6, 3)
    for m, labels in enumerate([[0, 2], [2], [0, 2], [2], [1], [0, 2]]):
        yk[m, labels] = 1
    yq = yk[:1]
    q = F.normalize(torch.randn(1, 4), dim=1)
    k = F.normalize(torch.randn(6, 4), dim=1)
    lp = torch.log_softmax(q @ k.T / 0.1, dim=1)[0]
    expected = (-(lp[[0, 2, 5]].mean()) - lp[[0, 1, 2, 3, 5]].mean()) / 2
    torch.testing.assert_close(multilabel_supcon(q, k, yq, yk, 0.1), expected)


def test_empty_batch_and_no_positive_are_zero_not_nan():
    q = F.normalize(torch.randn(4, 8), dim=1).requires_grad_()
    k = F.normalize(torch.randn(6, 8), dim=1)
    empty_q, yk = torch.zeros(4, 5), (torch.rand(6, 5) < 0.5).float()
    for positives in ("mulsupcon", "weighted", "all", "any"):
        loss = multilabel_supcon(q, k, empty_q, yk, 0.1, positives)
        assert loss.item() == 0.0
        loss.backward()
        assert torch.isfinite(q.grad).all()
    # anchors with labels but no candidate shares them: ALL/ANY/MulSupCon skip, never NaN
    yq = torch.zeros(4, 5)
    yq[:, 0] = 1
    yk = torch.zeros(6, 5)
    yk[:, 1] = 1
    for positives in ("mulsupcon", "weighted", "all", "any"):
        assert multilabel_supcon(q, k, yq, yk, 0.1, positives).item() == 0.0


def test_invalid_keys_never_count():
    q, k, yq, yk, _ = random_case(11, 4, 10, 5)
    valid = torch.tensor([True] * 6 + [False] * 4)
    for positives in ("mulsupcon", "weighted", "all", "any"):
        masked = multilabel_supcon(q, k, yq, yk, 0.1, positives, key_valid=valid)
        garbage_k = k.clone()
        garbage_k[6:] = torch.randn(4, k.shape[1]) * 100  # junk in unfilled slots changes nothing
        garbage_y = yk.clone()
        garbage_y[6:] = 1
        junk = multilabel_supcon(q, garbage_k, yq, garbage_y, 0.1, positives, key_valid=valid)
        dropped = multilabel_supcon(q, k[:6], yq, yk[:6], 0.1, positives)
        torch.testing.assert_close(masked, dropped)
        torch.testing.assert_close(junk, dropped)


def test_terms_split_for_global_normalisation():
    q, k, yq, yk, valid = random_case(5, 8, 12, 6)
    full = multilabel_supcon_terms(q, k, yq, yk, 0.1, "mulsupcon", valid)
    a = multilabel_supcon_terms(q[:3], k, yq[:3], yk, 0.1, "mulsupcon", valid)
    b = multilabel_supcon_terms(q[3:], k, yq[3:], yk, 0.1, "mulsupcon", valid)
    torch.testing.assert_close(a.numerator + b.numerator, full.numerator)
    torch.testing.assert_close(a.normaliser + b.normaliser, full.normaliser)
    usable = yq.float() * ((yk.float() * valid[:, None]).sum(0) > 0)
    assert full.normaliser.item() == float(usable.sum())
    assert not full.normaliser.requires_grad


@pytest.mark.parametrize("positives", ["mulsupcon", "weighted", "all", "any"])
def test_bf16_inputs_stay_finite_and_close(positives):
    q, k, yq, yk, valid = random_case(3, 32, 64, 20, D=32)
    ref = multilabel_supcon(q, k, yq, yk, 0.1, positives, key_valid=valid)
    qb = q.bfloat16().requires_grad_()
    got = multilabel_supcon(qb, k.bfloat16(), yq, yk, 0.1, positives, key_valid=valid)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    got.backward()
    assert torch.isfinite(qb.grad.float()).all()
    torch.testing.assert_close(got, ref, rtol=0.05, atol=0.05)


def test_bad_inputs_raise_clear_errors():
    q, k = torch.randn(2, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match="positives"):
        multilabel_supcon(q, k, torch.ones(2, 2), torch.ones(3, 2), positives="some")
    with pytest.raises(ValueError, match="class count"):
        multilabel_supcon(q, k, torch.ones(2, 2), torch.ones(3, 3))
    with pytest.raises(ValueError, match="one row per"):
        multilabel_supcon(q, k, torch.ones(3, 2), torch.ones(3, 2))

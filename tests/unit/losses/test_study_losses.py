"""The study's in-batch losses (mlcdist.losses.STUDY_LOSSES) against float64 loop references.

Each reference is written straight from docs/losses.md (= shared/papers/study-losses.md): explicit
Python loops over anchors, candidates and label sets; only the cosine matrix is a matrix product.
The conventions where the study's code is undefined are the documented ones: an anchor without
labels (or positives) is skipped and not counted, but stays a candidate.
"""

from __future__ import annotations

import math

import pytest
import torch

from mlcdist.losses import STUDY_LOSSES
from mlcdist.losses.regularised import node_weights, regularised_from_scores

EPS = 1e-8
PROTO_KEYS = ("proto", "msc", "reg", "reg_plain")
LOGIT_KEYS = ("zlpr", "asl", "bce")


# ----------------------------------------------------------------------------- references
def _unit(x):
    return torch.stack([r / torch.clamp(r.norm(), min=1e-12) for r in x])


def _sets(labels):
    return [set(torch.nonzero(r).flatten().tolist()) for r in labels]


def _zero(x):
    return x.sum() * 0.0


def ref_jaccard(x, y, temperature):
    z = _unit(x)
    s, sets, total, anchors = z @ z.T / temperature, _sets(y), _zero(x), 0
    for i in range(len(z)):
        jac = {j: len(sets[i] & sets[j]) / (len(sets[i] | sets[j]) + EPS) for j in range(len(z)) if j != i}
        jac_sum = sum(jac.values())
        anchors += jac_sum > 0
        if not jac:
            continue
        lse = torch.logsumexp(torch.stack([s[i, k] for k in jac]), 0)
        for j, value in jac.items():
            if value:
                total = total - value / (jac_sum + EPS) * (s[i, j] - lse)
    return total / (anchors + EPS)


def ref_mulsupcon(x, y, temperature):
    z = _unit(x)
    s, sets, total = z @ z.T / temperature, _sets(y), _zero(x)
    pairs = sum(len(t) for t in sets)
    for i in range(len(z)):
        others = [j for j in range(len(z)) if j != i]
        if not others:
            continue
        lse = torch.logsumexp(torch.stack([s[i, k] for k in others]), 0)
        for c in sets[i]:
            positives = [j for j in others if c in sets[j]]
            for j in positives:
                total = total - (s[i, j] - lse) / (len(positives) + EPS)
    return total / max(pairs, 1)


def ref_proto(x, y, prototypes, temperature):
    z, p, sets, total, anchors = _unit(x), _unit(prototypes), _sets(y), _zero(x), 0
    for i in range(len(z)):
        if not sets[i]:
            continue
        logits = [z[i] @ p[c] / temperature for c in range(len(p))]
        lse = torch.logsumexp(torch.stack(logits), 0)
        total = total - sum(logits[c] - lse for c in sets[i]) / len(sets[i])
        anchors += 1
    return total / max(anchors, 1)


def ref_msc(x, y, prototypes, temperature, alpha, beta):
    z, p, sets, total, anchors = _unit(x), _unit(prototypes), _sets(y), _zero(x), 0
    for i in range(len(z)):
        if not sets[i]:
            continue
        others = [j for j in range(len(z)) if j != i]
        inst = {j: z[i] @ z[j] / temperature for j in others}
        proto = [z[i] @ p[c] / temperature for c in range(len(p))]
        log_d = torch.log(beta * sum((torch.exp(v) for v in inst.values()), _zero(x))
                          + sum(torch.exp(v) for v in proto))
        term = _zero(x)
        for c in sets[i]:
            carriers = [j for j in others if c in sets[j]]
            norm = 1 + alpha * sum(1 / len(sets[i] | sets[j]) for j in carriers)
            term = term + (proto[c] - log_d) / (norm + EPS)
            for j in carriers:
                term = term + alpha / (len(sets[i] | sets[j]) * (norm + EPS)) * (inst[j] - log_d)
        total = total - term / len(sets[i])
        anchors += 1
    return total / max(anchors, 1)


def ref_reg(x, y, prototypes, temperature, alpha, regularise):
    u = torch.cat([_unit(x), _unit(prototypes)])
    sets = _sets(y) + [{c} for c in range(len(prototypes))]
    scores, total, anchors, n = u @ u.T / temperature, _zero(x), 0, len(u)

    def f(a, b):
        overlap = len(sets[a] & sets[b]) / len(sets[b]) if sets[b] else 0.0
        return overlap ** alpha if alpha >= 0 else float(overlap >= 1 - EPS)

    rows = scores.unbind(0)  # one backward node instead of one N x N gradient per row
    carriers = {c: [b for b in range(n) if c in sets[b]] for c in range(len(prototypes))}
    for a in range(n):
        if not sets[a]:
            continue
        others = [b for b in range(n) if b != a]
        f_row = {b: f(a, b) for b in others if sets[a] & sets[b]}  # f only matters where labels are shared
        norm = {c: sum(f_row[b] for b in carriers[c] if b != a) for c in sets[a]}
        w = [0.0] * n
        for b in f_row:
            w[b] = sum(f_row[b] / (norm[c] + EPS) for c in sets[a] & sets[b]) / len(sets[a])
        anchors += sum(w) != 0
        lse = torch.logsumexp(rows[a][others], 0)
        row = rows[a].tolist()
        extra = [0.0] * n
        for b in f_row:
            if regularise and w[b]:
                extra[b] = max(math.exp(row[b] - lse.item()) - w[b], 0.0)  # detached softmax share
        total = total - (torch.tensor(w, dtype=u.dtype) * (rows[a] - lse)).sum()
        total = total - (torch.tensor(extra, dtype=u.dtype) * rows[a]).sum()
    return total / anchors if anchors else total


def ref_zlpr_study(x, y):
    """The study's value (stabilisers subtracted, detached) and the textbook value."""
    study, textbook = _zero(x), _zero(x)
    for i in range(len(x)):
        pos = [x[i, c] for c in range(x.shape[1]) if y[i, c] > 0]
        neg = [x[i, c] for c in range(x.shape[1]) if y[i, c] == 0]
        textbook = textbook + torch.log(1 + sum((torch.exp(-v) for v in pos), _zero(x)))
        textbook = textbook + torch.log(1 + sum((torch.exp(v) for v in neg), _zero(x)))
        m_pos = max(-v.item() for v in pos if v.item() != 0)
        m_neg = max(v.item() for v in neg if v.item() != 0)
        study = study + torch.log(sum(torch.exp(-v - m_pos) for v in pos) + math.exp(-m_pos))
        study = study + torch.log(sum(torch.exp(v - m_neg) for v in neg) + math.exp(-m_neg))
    return study / len(x), textbook / len(x)


def ref_zlpr(x, y):
    """Textbook ZLPR: log(1 + sum_pos e^-x) + log(1 + sum_neg e^x), each as a stable log-sum-exp."""
    total = _zero(x)
    for i in range(len(x)):
        pos = [-x[i, c] for c in range(x.shape[1]) if y[i, c] > 0]
        neg = [x[i, c] for c in range(x.shape[1]) if y[i, c] == 0]
        total = total + torch.logsumexp(torch.stack([_zero(x)] + pos), 0)
        total = total + torch.logsumexp(torch.stack([_zero(x)] + neg), 0)
    return total / len(x)


def ref_asl(x, y, gamma_neg=1.0, gamma_pos=0.0, clip=0.0, eps=1e-5):
    total = _zero(x)
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            p = torch.sigmoid(x[i, c])
            q = 1 - p
            if clip > 0:
                q = torch.clamp(q + clip, max=1.0)
            if y[i, c] > 0:
                ell = torch.log(torch.clamp(p, min=eps))
                if gamma_neg > 0 or gamma_pos > 0:
                    ell = ell * (1 - p) ** gamma_pos
            else:
                ell = torch.log(torch.clamp(q, min=eps))
                if gamma_neg > 0 or gamma_pos > 0:
                    ell = ell * (1 - q) ** gamma_neg
            total = total - ell
    return total / y.numel()


def ref_bce(x, y):
    total = _zero(x)
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            # -log sigmoid(x) = softplus(-x), -log(1 - sigmoid(x)) = softplus(x): exact without overflow
            total = total + torch.nn.functional.softplus(-x[i, c] if y[i, c] > 0 else x[i, c])
    return total / y.numel()


# ----------------------------------------------------------------------------- cases
SHAPES = [(1, 1), (1, 7), (2, 1), (3, 4), (7, 3), (12, 9), (20, 30), (64, 5), (9, 200), (33, 61)]
REG_SHAPES = [s for s in SHAPES if s != (9, 200)] + [(2, 200)]  # N = B + C nodes: keep the loops small
TEMPERATURES = (0.05, 0.1, 0.5, 1.0)


def make_case(batch, classes, seed, dim=6):
    g = torch.Generator().manual_seed(seed)
    density = 0.05 + 0.55 * torch.rand((), generator=g).item()
    y = (torch.rand(batch, classes, generator=g) < density).double()
    if batch > 2:
        y[torch.rand(batch, generator=g) < 0.2] = 0  # empty rows
        y[1] = y[0]  # duplicated label sets
    if classes > 2:
        y[:, torch.rand(classes, generator=g) < 0.2] = 0  # dead label columns
    scale = torch.exp(torch.randn(batch, 1, generator=g, dtype=torch.float64))
    x = torch.randn(batch, dim, generator=g, dtype=torch.float64) * scale
    p = torch.randn(classes, dim, generator=g, dtype=torch.float64)
    return x, y, p, TEMPERATURES[seed % len(TEMPERATURES)]




def check(fn, ref, grads, others, kwargs, ref_args=()):
    """Value and gradients (w.r.t. the tensors in ``grads``) of fn equal those of ref."""
    ours_in = [t.clone().requires_grad_(True) for t in grads]
    ref_in = [t.clone().requires_grad_(True) for t in grads]
    ours = fn(*ours_in[:1], *others, *ours_in[1:], **kwargs)
    expected = ref(*ref_in[:1], *others, *ref_in[1:], *ref_args)
    assert ours.dim() == 0 and ours.dtype == torch.float64
    torch.testing.assert_close(ours, expected.detach(), rtol=1e-5, atol=1e-10)
    got = torch.autograd.grad(ours, ours_in, allow_unused=True)
    want = torch.autograd.grad(expected, ref_in, allow_unused=True) if expected.requires_grad else [None] * len(ref_in)
    for g_ours, g_ref, t in zip(got, want, grads):
        g_ours = torch.zeros_like(t) if g_ours is None else g_ours
        g_ref = torch.zeros_like(t) if g_ref is None else g_ref
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_in_batch_losses_match_loop_reference(shape, seed):
    x, y, _, tau = make_case(*shape, seed=seed + 10 * shape[0] + shape[1])
    check(STUDY_LOSSES["jaccard"], ref_jaccard, [x], [y], {"temperature": tau}, (tau,))
    check(STUDY_LOSSES["mulsupcon"], ref_mulsupcon, [x], [y], {"temperature": tau}, (tau,))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_prototype_losses_match_loop_reference(shape, seed):
    case_seed = seed + 10 * shape[0] + shape[1]
    x, y, p, tau = make_case(*shape, seed=case_seed)
    alpha, beta = (0.0, 0.5, 1.0, 2.0)[case_seed % 4], (0.1, 0.5, 1.0)[case_seed % 3]
    check(STUDY_LOSSES["proto"], ref_proto, [x, p], [y], {"temperature": tau}, (tau,))
    check(STUDY_LOSSES["msc"], ref_msc, [x, p], [y], {"temperature": tau, "alpha": alpha, "beta": beta},
          (tau, alpha, beta))


@pytest.mark.parametrize("shape", REG_SHAPES)
@pytest.mark.parametrize("alpha", [-1.0, 0.0, 0.5, 2.0])
def test_regularised_losses_match_loop_reference(shape, alpha):
    x, y, p, tau = make_case(*shape, seed=int(100 * alpha) + shape[0] + 7 * shape[1])
    for key, regularise in (("reg", True), ("reg_plain", False)):
        check(STUDY_LOSSES[key], ref_reg, [x, p], [y], {"temperature": tau, "alpha": alpha},
              (tau, alpha, regularise))


@pytest.mark.parametrize("shape", [(1, 1), (3, 4), (7, 3), (12, 9), (5, 40)])
@pytest.mark.parametrize("seed", [0, 1])
def test_logit_losses_match_loop_reference(shape, seed):
    x, y, _, _ = make_case(*shape, seed=seed + shape[1])
    logits = x[:, :1] * torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3
    check(STUDY_LOSSES["zlpr"], ref_zlpr, [logits], [y], {})
    check(STUDY_LOSSES["bce"], ref_bce, [logits], [y], {})
    check(STUDY_LOSSES["asl"], ref_asl, [logits], [y], {})
    for kw in ({"gamma_neg": 4.0, "gamma_pos": 1.0, "clip": 0.05}, {"gamma_neg": 0.0, "gamma_pos": 0.0}):
        check(STUDY_LOSSES["asl"], ref_asl, [logits], [y], kw, tuple(kw.get(k, d) for k, d in (
            ("gamma_neg", 1.0), ("gamma_pos", 0.0), ("clip", 0.0))))


def test_zlpr_gradient_equals_the_studys_and_value_is_textbook():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 9, generator=g, dtype=torch.float64) * 2
    y = (torch.rand(6, 9, generator=g) < 0.4).double()
    y[:, 0], y[:, 1] = 1, 0  # every row has a positive and a negative: the study's value is finite
    ours_in, ref_in = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    ours = STUDY_LOSSES["zlpr"](ours_in, y)
    study, textbook = ref_zlpr_study(ref_in, y)
    torch.testing.assert_close(ours, textbook.detach(), rtol=1e-5, atol=0)
    assert (ours - study).abs() > 1e-3  # the study's reported value is shifted
    torch.testing.assert_close(torch.autograd.grad(ours, ours_in)[0], torch.autograd.grad(study, ref_in)[0],
                               rtol=1e-5, atol=1e-12)


def test_reg_removes_the_push_away_gradient_of_over_served_positives():
    g = torch.Generator().manual_seed(0)
    batch, classes = 24, 5
    y = (torch.rand(batch, classes, generator=g) < 0.4).double()
    u = torch.nn.functional.normalize(torch.randn(batch + classes, 4, generator=g, dtype=torch.float64), dim=1)
    node_labels = torch.cat([y, torch.eye(classes, dtype=torch.float64)])
    w = node_weights(node_labels, alpha=0.0)
    scores = (u @ u.T / 0.1).requires_grad_(True)
    grad_reg = torch.autograd.grad(regularised_from_scores(scores, w, True), scores)[0]
    grad_plain = torch.autograd.grad(regularised_from_scores(scores, w, False), scores)[0]
    eye = torch.eye(len(u), dtype=torch.bool)
    lse = torch.logsumexp(scores.detach().masked_fill(eye, float("-inf")), 1, keepdim=True)
    share = torch.exp(scores.detach() - lse).masked_fill(eye, 0)
    anchors = (w.sum(1) != 0).sum()
    over = (w > 0) & (share > w)
    under = (w > 0) & (share <= w)
    negative = (w == 0) & ~eye
    assert over.sum() > 10 and under.sum() > 10
    assert grad_reg[over].abs().max() < 1e-6 / anchors  # no push-away (EPS-sized residual)
    assert (grad_plain[over] > 0).all()  # plain SupCon pushes these positives away
    torch.testing.assert_close(grad_reg[under], grad_plain[under])
    torch.testing.assert_close(grad_reg[under], ((share - w) / anchors)[under], rtol=1e-6, atol=1e-9)
    # negatives: W_a sigma_ab / A (W_a = 1 - O(EPS); 0 for label-less samples, which are not anchors)
    torch.testing.assert_close(grad_reg[negative], (w.sum(1, keepdim=True) * share / anchors)[negative])


@pytest.mark.parametrize("key", sorted(STUDY_LOSSES))
def test_undefined_cases_are_finite_and_dtypes_follow_inputs(key):
    fn = STUDY_LOSSES[key]
    for batch in (1, 4):
        for labels in (torch.zeros(batch, 3), torch.ones(batch, 3)):
            for dtype, expected in ((torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                                    (torch.float32, torch.float32), (torch.float64, torch.float64)):
                x = torch.randn(batch, 3 if key in LOGIT_KEYS else 8, dtype=dtype, requires_grad=True)
                args = (x, labels, torch.randn(3, 8, dtype=dtype)) if key in PROTO_KEYS else (x, labels)
                value = fn(*args)
                assert value.dim() == 0 and value.dtype == expected and torch.isfinite(value)
                value.backward()
                assert torch.isfinite(x.grad).all()

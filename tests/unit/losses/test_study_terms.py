"""The trainer's forms of the study's losses (mlcdist.losses.study_terms), in float64.

- In-batch (candidates = the batch, self excluded): equal to the STUDY_LOSSES function, value and
  gradients w.r.t. features and prototypes.
- MoCo (queries against keys + a queue with unfilled slots, own key included, prototypes): equal to
  a loop reference written from docs/losses.md with "the other samples" = the valid candidates.
- Split anchors (what W ranks compute): summed numerators and normalisers, shared terms once, give the
  same loss.
"""

from __future__ import annotations

import math

import pytest
import torch

from mlcdist.losses import STUDY_LOSSES
from mlcdist.losses.study_terms import NEEDS_PROTOTYPES, STUDY_CONTRASTIVE, study_terms

EPS = 1e-8


def combined(terms):
    return (terms.numerator + terms.shared_numerator) / (terms.normaliser + terms.shared_normaliser).clamp_min(1)


def case(batch, classes, seed, dim=5):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(batch, classes, generator=g) < 0.4).double()
    if batch > 2:
        y[2] = 0  # a sample without labels
        y[1] = y[0]  # duplicated label sets
    if classes > 2:
        y[:, -1] = 0  # a dead label column
    x = torch.randn(batch, dim, generator=g, dtype=torch.float64) * 2.0
    p = torch.randn(classes, dim, generator=g, dtype=torch.float64)
    return x, y, p


def hyper(kind, alpha):
    if kind in ("msc", "reg", "reg_plain") and alpha is not None:
        return {"alpha": alpha, **({"beta": 0.3} if kind == "msc" else {})}
    return {}


def grads_close(a, b, inputs):
    ga = torch.autograd.grad(a, inputs, allow_unused=True)
    gb = torch.autograd.grad(b, inputs, allow_unused=True)
    for x, u, v in zip(inputs, ga, gb):
        u = torch.zeros_like(x) if u is None else u
        v = torch.zeros_like(x) if v is None else v
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("kind", STUDY_CONTRASTIVE)
@pytest.mark.parametrize("shape,alpha", [((1, 3), None), ((6, 4), 0.5), ((13, 7), None), ((20, 30), -1.0)])
def test_in_batch_form_equals_the_registry_function(kind, shape, alpha):
    x, y, p = case(*shape, seed=shape[0] * 7 + shape[1])
    x.requires_grad_(True)
    p.requires_grad_(True)
    kw = hyper(kind, alpha)
    args = (x, y, p) if kind in NEEDS_PROTOTYPES else (x, y)
    want = STUDY_LOSSES[kind](*args, temperature=0.2, **kw)
    got = combined(study_terms(kind, x, y, x, y, p, temperature=0.2, self_index=torch.arange(len(x)), **kw))
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-10)
    grads_close(got, want, [x, p])


# ----------------------------------------------------------------------------- MoCo loop references
def _unit(x):
    return torch.stack([r / torch.clamp(r.norm(), min=1e-12) for r in x])


def _sets(labels):
    return [set(torch.nonzero(r).flatten().tolist()) for r in labels]


def ref_jaccard(q, yq, k, yk, valid, tau):
    z, kk, total, anchors = _unit(q), _unit(k), q.sum() * 0, 0
    sq, sk = _sets(yq), _sets(yk)
    cands = [a for a in range(len(kk)) if valid[a]]
    for i in range(len(z)):
        s = {a: z[i] @ kk[a] / tau for a in cands}
        jac = {a: len(sq[i] & sk[a]) / (len(sq[i] | sk[a]) + EPS) for a in cands}
        jsum = sum(jac.values())
        anchors += jsum > 0
        lse = torch.logsumexp(torch.stack(list(s.values())), 0)
        for a in cands:
            if jac[a]:
                total = total - jac[a] / (jsum + EPS) * (s[a] - lse)
    return total / max(anchors, 1)


def ref_proto(q, yq, k, yk, valid, tau, p):
    z, pp, sq, total, anchors = _unit(q), _unit(p), _sets(yq), q.sum() * 0, 0
    for i in range(len(z)):
        if sq[i]:
            logits = [z[i] @ pp[c] / tau for c in range(len(pp))]
            lse = torch.logsumexp(torch.stack(logits), 0)
            total = total - sum(logits[c] - lse for c in sq[i]) / len(sq[i])
            anchors += 1
    return total / max(anchors, 1)


def ref_msc(q, yq, k, yk, valid, tau, p, alpha, beta):
    z, kk, pp, total, anchors = _unit(q), _unit(k), _unit(p), q.sum() * 0, 0
    sq, sk = _sets(yq), _sets(yk)
    cands = [a for a in range(len(kk)) if valid[a]]
    for i in range(len(z)):
        if not sq[i]:
            continue
        inst = {a: z[i] @ kk[a] / tau for a in cands}
        proto = [z[i] @ pp[c] / tau for c in range(len(pp))]
        log_d = torch.log(beta * sum(torch.exp(v) for v in inst.values()) + sum(torch.exp(v) for v in proto))
        term = q.sum() * 0
        for c in sq[i]:
            carriers = [a for a in cands if c in sk[a]]
            norm = 1 + alpha * sum(1 / len(sq[i] | sk[a]) for a in carriers)
            term = term + (proto[c] - log_d) / (norm + EPS)
            for a in carriers:
                term = term + alpha / (len(sq[i] | sk[a]) * (norm + EPS)) * (inst[a] - log_d)
        total = total - term / len(sq[i])
        anchors += 1
    return total / anchors


def _reg_anchor(label_set, cands, alpha, regularise):
    """-sum_b [w_b log p_b + r_b S_b] and whether it counts, for one anchor; ``cands`` = [(score, set)]."""
    if not label_set:
        return 0.0, False

    def f(other):
        overlap = len(label_set & other) / len(other) if other else 0.0
        return overlap ** alpha if alpha >= 0 else float(overlap >= 1 - EPS)

    norm = {c: sum(f(o) for _, o in cands if c in o) for c in label_set}
    w = [sum(f(o) / (norm[c] + EPS) for c in label_set & o) / len(label_set) for _, o in cands]
    lse = torch.logsumexp(torch.stack([s for s, _ in cands]), 0)
    out = 0.0
    for (s, _), wb in zip(cands, w):
        out = out - wb * (s - lse)
        if regularise and wb:
            out = out - max(math.exp(s.item() - lse.item()) - wb, 0.0) * s
    return out, sum(w) != 0


def ref_reg(q, yq, k, yk, valid, tau, p, alpha, regularise):
    z, kk, pp = _unit(q), _unit(k), _unit(p)
    sq, sk = _sets(yq), _sets(yk)
    keys = [(kk[a], sk[a]) for a in range(len(kk)) if valid[a]]
    protos = [(pp[c], {c}) for c in range(len(pp))]
    total, anchors = q.sum() * 0, 0
    for i in range(len(z)):  # query anchors: keys (own included) and all prototypes
        value, counts = _reg_anchor(sq[i], [(z[i] @ v / tau, o) for v, o in keys + protos], alpha, regularise)
        total, anchors = total + value, anchors + counts
    for c in range(len(pp)):  # prototype anchors: keys and the other prototypes
        others = keys + [protos[d] for d in range(len(pp)) if d != c]
        value, counts = _reg_anchor({c}, [(pp[c] @ v / tau, o) for v, o in others], alpha, regularise)
        total, anchors = total + value, anchors + counts
    return total / max(anchors, 1)


def moco_case(seed, batch=5, queue=7, classes=4, dim=5):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    yq = (torch.rand(batch, classes, generator=g) < 0.45).double()
    yq[3] = 0
    keys = torch.cat([q + 0.3 * torch.randn(batch, dim, generator=g, dtype=torch.float64),  # own keys
                      torch.randn(queue, dim, generator=g, dtype=torch.float64)])
    yk = torch.cat([yq, (torch.rand(queue, classes, generator=g) < 0.45).double()])
    valid = torch.ones(batch + queue, dtype=torch.bool)
    valid[-3:] = False  # unfilled queue slots (their labels are garbage: must not matter)
    yk[-3:] = 1.0
    p = torch.randn(classes, dim, generator=g, dtype=torch.float64)
    return q, yq, keys, yk, valid, p


REFS = {"jaccard": ref_jaccard, "proto": ref_proto, "msc": ref_msc,
        "reg": lambda *a, alpha: ref_reg(*a, alpha, True), "reg_plain": lambda *a, alpha: ref_reg(*a, alpha, False)}


@pytest.mark.parametrize("kind", list(REFS))
@pytest.mark.parametrize("alpha", [None, 0.7, -1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_moco_form_equals_a_float64_loop_reference(kind, alpha, seed):
    q, yq, k, yk, valid, p = moco_case(seed)
    q.requires_grad_(True)
    p.requires_grad_(True)
    tau = 0.3
    got = combined(study_terms(kind, q, yq, k, yk, p, temperature=tau, valid=valid, **hyper(kind, alpha)))
    if kind == "msc":
        want = ref_msc(q, yq, k, yk, valid, tau, p, 1.0 if alpha is None else alpha, 0.3 if alpha is not None else 0.1)
    elif kind in ("reg", "reg_plain"):
        want = REFS[kind](q, yq, k, yk, valid, tau, p, alpha=0.0 if alpha is None else alpha)
    elif kind == "proto":
        want = ref_proto(q, yq, k, yk, valid, tau, p)
    else:
        want = ref_jaccard(q, yq, k, yk, valid, tau)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-10)
    grads_close(got, want, [q, p])


@pytest.mark.parametrize("kind", STUDY_CONTRASTIVE)
@pytest.mark.parametrize("in_batch", [True, False])
def test_split_anchors_sum_to_the_whole(kind, in_batch):
    """What two ranks compute (each half of the anchors, the same candidates) adds up to one rank's."""
    q, yq, k, yk, valid, p = moco_case(3, batch=6)
    if in_batch:
        k, yk, valid = q, yq, None
    kw = dict(temperature=0.25, valid=valid)
    index = torch.arange(len(q))
    whole = study_terms(kind, q, yq, k, yk, p, self_index=index if in_batch else None, **kw)
    halves = [study_terms(kind, q[s], yq[s], k, yk, p, self_index=index[s] if in_batch else None, **kw)
              for s in (slice(0, 3), slice(3, 6))]
    for a, b in zip(halves[0][2:], halves[1][2:]):
        torch.testing.assert_close(a, b)  # shared terms are the same on every rank
    num = halves[0].numerator + halves[1].numerator + halves[0].shared_numerator
    norm = halves[0].normaliser + halves[1].normaliser + halves[0].shared_normaliser
    torch.testing.assert_close(num / norm.clamp_min(1), combined(whole))


def test_unknown_kind_and_missing_prototypes_are_clear_errors():
    q, yq, k, yk, valid, p = moco_case(0)
    with pytest.raises(ValueError, match="kind='base'"):
        study_terms("base", q, yq, k, yk, p)
    with pytest.raises(ValueError, match="reg needs prototypes"):
        study_terms("reg", q, yq, k, yk)

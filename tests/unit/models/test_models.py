"""Backbones, projection head, query/key model, the strict state loader, and the float32-master EMA."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from mlcdist.config import ModelConfig
from mlcdist.models import (
    ContrastiveModel, SupervisedModel, WeightsFileError, build_backbone, build_model, ema_update_,
    load_state_strict,
)
from mlcdist.models.backbones import _enable_checkpointing


def cfg(**kw) -> ModelConfig:
    return ModelConfig(**kw)


# ---------------------------------------------------------------------------------------------
# Backbones
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,width", [("resnet18", 512), ("resnet50", 2048)])
def test_resnet_widths(arch, width):
    torch.manual_seed(0)
    model, w = build_backbone(cfg(arch=arch))
    assert w == width and isinstance(model.fc, nn.Identity)
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, width)


def test_vit_width_image_size_and_checkpoint_switch():
    model, w = build_backbone(cfg(arch="vit_b_16", grad_checkpointing=True), image_size=32)
    assert w == 768 and isinstance(model.heads, nn.Identity) and model.image_size == 32
    assert type(model.encoder.layers).__name__ == "CheckpointedEach"
    assert "encoder.layers.encoder_layer_11.mlp.0.weight" in model.state_dict()  # keys unchanged
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 768)
    with pytest.raises(ValueError, match="divisible by 16"):
        build_backbone(cfg(arch="vit_b_16"), image_size=30)


def test_mlp_structure_and_in_dim_error():
    model, w = build_backbone(cfg(arch="mlp", mlp_dims=[8, 6, 4], dropout=0.25), in_dim=10)
    assert w == 4
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Linear", "ReLU", "Dropout"] * 3
    assert [m.in_features for m in model if isinstance(m, nn.Linear)] == [10, 8, 6]
    assert all(m.p == 0.25 for m in model if isinstance(m, nn.Dropout))
    assert model(torch.randn(5, 10)).shape == (5, 4)
    with pytest.raises(ValueError, match="needs in_dim"):
        build_backbone(cfg(arch="mlp"))


def test_weights_file_loads_exactly(tmp_path):
    torch.manual_seed(1)
    source = torchvision.models.resnet18(weights=None, num_classes=7)  # classifier keys are ignored
    path = tmp_path / "r18.pt"
    torch.save(source.state_dict(), path)
    model, _ = build_backbone(cfg(arch="resnet18", weights=str(path)))
    for name, value in model.state_dict().items():
        assert torch.equal(value, source.state_dict()[name]), name


def test_weights_file_errors(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["conv1.weight"] = torch.zeros(2, 2)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(WeightsFileError) as err:
        build_backbone(cfg(arch="resnet18", weights=str(bad)))
    msg = str(err.value)
    assert "bad.pt" in msg and "missing keys: layer1.0.conv1.weight" in msg
    assert "unexpected keys: extra.weight" in msg and "conv1.weight (file (2, 2)" in msg

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file at all")
    with pytest.raises(WeightsFileError, match="corrupt.pt is not a readable torch state_dict"):
        build_backbone(cfg(arch="resnet18", weights=str(corrupt)))
    with pytest.raises(WeightsFileError, match="not found"):
        build_backbone(cfg(arch="resnet18", weights=str(tmp_path / "nope.pt")))


def _grads_with(checkpointing: bool, arch: str, x: torch.Tensor, **kw):
    torch.manual_seed(0)
    model, _ = build_backbone(cfg(arch=arch, grad_checkpointing=checkpointing), **kw)
    model.train()
    out = model(x)
    (out ** 2).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return model, out.detach(), grads


def test_grad_checkpointing_resnet_same_gradients_and_bn_stats():
    x = torch.randn(2, 3, 32, 32)
    plain, out0, g0 = _grads_with(False, "resnet18", x)
    ckpt, out1, g1 = _grads_with(True, "resnet18", x)
    assert type(ckpt.layer1).__name__ == "CheckpointedStage"
    assert list(plain.state_dict()) == list(ckpt.state_dict())  # checkpoints stay interchangeable
    torch.testing.assert_close(out1, out0)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-5, atol=1e-6, msg=name)
    # recomputation must not update BatchNorm running statistics a second time
    for (name, b0), b1 in zip(plain.named_buffers(), ckpt.buffers()):
        assert torch.equal(b0, b1), name


def test_grad_checkpointing_vit_blocks_same_gradients():
    # A two-block ViT with the same structure as vit_b_16 keeps the test fast on CPU.
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    plain = VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2,
                              hidden_dim=32, mlp_dim=64, dropout=0.1)
    ckpt = copy.deepcopy(plain)
    _enable_checkpointing(ckpt, "vit_b_16")
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for model in (plain, ckpt):
        torch.manual_seed(3)  # same dropout masks; checkpointing replays the RNG state
        (model.train()(x) ** 2).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


# ---------------------------------------------------------------------------------------------
# Contrastive and supervised models
# ---------------------------------------------------------------------------------------------


def small_contrastive(**kw) -> ContrastiveModel:
    torch.manual_seed(0)
    c = cfg(arch="mlp", mlp_dims=[16, 16], head_dims=[12, 6], dropout=0.0, **kw)
    return build_model(c, num_classes=3, in_dim=8)


def test_contrastive_model_query_and_key():
    model = small_contrastive(head_bn=False)
    x = torch.randn(4, 8)
    z = model.query(x)
    assert z.shape == (4, 6) and z.dtype == torch.float32
    torch.testing.assert_close(z.norm(dim=1), torch.ones(4))
    assert [m.out_features for m in model.query.head.layers if isinstance(m, nn.Linear)] == [12, 6]
    assert isinstance(model.query.head.layers[1], nn.ReLU) and len(model.query.head.layers) == 3
    assert all(not p.requires_grad for p in model.key.parameters())
    assert all(p.requires_grad for p in model.query.parameters())
    assert model.key.training
    for pq, pk in zip(model.query.parameters(), model.key.parameters()):
        assert torch.equal(pq, pk) and pq.data_ptr() != pk.data_ptr()
    with torch.no_grad():  # how the trainer calls the key encoder (train/objective.py)
        k = model.key(x)
    assert not k.requires_grad
    torch.testing.assert_close(k, z.detach())


def test_head_batch_norm_layout_and_why():
    head = small_contrastive().query.head  # head_bn defaults to True (the authors' head)
    kinds = [type(m) for m in head.layers]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head.layers[0].bias is None and head.layers[3].bias is not None  # BN makes it redundant
    assert [type(m) for m in small_contrastive(head_bn=False).query.head.layers] == [
        nn.Linear, nn.ReLU, nn.Linear]


def test_supervised_model_and_factory_errors():
    torch.manual_seed(0)
    model = build_model(cfg(arch="mlp", mlp_dims=[16]), num_classes=5, in_dim=8, kind="supervised")
    assert isinstance(model, SupervisedModel)
    assert model(torch.randn(3, 8)).shape == (3, 5)
    with pytest.raises(ValueError, match="kind"):
        build_model(cfg(arch="mlp"), num_classes=5, in_dim=8, kind="byol")


def test_key_batchnorm_buffers_come_from_key_forward_only():
    torch.manual_seed(0)
    model = build_model(cfg(arch="resnet18", head_dims=[8]), num_classes=2)
    q_bn, k_bn = model.query.backbone.bn1, model.key.backbone.bn1
    ema_update_(list(model.key.parameters()), list(model.query.parameters()), 0.9)
    assert torch.equal(k_bn.running_mean, torch.zeros_like(k_bn.running_mean))
    with torch.no_grad():
        model.key(torch.randn(2, 3, 32, 32))
    assert not torch.equal(k_bn.running_mean, torch.zeros_like(k_bn.running_mean))
    assert torch.equal(q_bn.running_mean, torch.zeros_like(q_bn.running_mean))


# ---------------------------------------------------------------------------------------------
# EMA
# ---------------------------------------------------------------------------------------------


def test_ema_formula_matches_float64_manual():
    torch.manual_seed(0)
    target = [torch.randn(5, 3, dtype=torch.float64), torch.randn(7, dtype=torch.float64)]
    source = [torch.randn(5, 3, dtype=torch.float64), torch.randn(7, dtype=torch.float64)]
    expected = [0.97 * t + 0.03 * s for t, s in zip(target, source)]
    by_tensor = [t.clone() for t in target]
    ema_update_(target, source, 0.97)
    ema_update_(by_tensor, source, torch.tensor(0.97, dtype=torch.float64))
    for got, tens, want in zip(target, by_tensor, expected):
        torch.testing.assert_close(got, want, rtol=1e-15, atol=1e-15)
        torch.testing.assert_close(tens, want, rtol=1e-15, atol=1e-15)
    with pytest.raises(ValueError, match="target"):
        ema_update_(target, source[:1], 0.9)


def test_bf16_naive_ema_is_lost_but_fp32_master_is_not():
    m, steps = 0.999, 300
    key_init = torch.ones(64, dtype=torch.bfloat16)
    query = torch.full((64,), 1.1, dtype=torch.bfloat16)  # 1.1 -> 1.1015625 in bf16

    naive = key_init.clone()
    for _ in range(steps):
        ema_update_([naive], [query], m)  # bf16 target: each 1e-4 step rounds away
    assert torch.equal(naive, key_init)

    master = key_init.float()  # the trainer's key encoder: float32 parameters, bf16 compute
    for _ in range(steps):
        ema_update_([master], [query], m)
    key = master.to(torch.bfloat16)  # what a bf16 forward of the key encoder sees
    exact = 1.0 + (1.1015625 - 1.0) * (1 - m ** steps)  # closed form in float64: ~1.026
    assert key.dtype == torch.bfloat16 and float(key[0]) > 1.015
    assert abs(float(key[0]) - exact) <= 2 ** -7  # within one bf16 ulp of the exact EMA
    assert abs(float(master[0]) - exact) < 1e-4  # fp32 accumulation, << bf16 ulp


def test_bf16_training_key_tracks_float64_reference():
    model = small_contrastive()  # float32 parameters (the masters); bf16 autocast, as the trainer
    opt = torch.optim.SGD(model.query.parameters(), lr=0.05)
    ref = [p.detach().double().clone() for p in model.key.parameters()]
    start = [p.detach().clone() for p in model.key.parameters()]
    torch.manual_seed(1)
    for _ in range(30):
        x = torch.randn(16, 8)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            anchors = model.query(x)
            with torch.no_grad():
                keys = model.key(x + 0.1)
        loss = -(anchors @ keys.T).diagonal().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_update_(list(model.key.parameters()), list(model.query.parameters()), 0.999)
        for r, q in zip(ref, model.query.parameters()):
            r.mul_(0.999).add_(q.detach().double(), alpha=0.001)
    assert all(p.dtype == torch.float32 for p in model.key.parameters())  # bf16 compute only
    moved = sum(int((p != s).sum()) for p, s in zip(model.key.parameters(), start))
    assert moved > 0
    for p, r in zip(model.key.parameters(), ref):
        # float32 accumulation: the master tracks the float64 EMA far below a bf16 ulp
        torch.testing.assert_close(p.double(), r, rtol=0, atol=1e-6)


def test_fp32_key_is_its_own_master():
    model = small_contrastive()
    with torch.no_grad():
        for p in model.query.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.key.parameters()]
    ema_update_(list(model.key.parameters()), list(model.query.parameters()), 0.5)
    for p, b, q in zip(model.key.parameters(), before, model.query.parameters()):
        torch.testing.assert_close(p, 0.5 * b + 0.5 * q)


# ---------------------------------------------------------------------------------------------
# Strict state loading
# ---------------------------------------------------------------------------------------------


def test_load_state_strict_loads_an_exact_fit_and_names_every_kind_of_mismatch():
    target, source = nn.Linear(3, 2), nn.Linear(3, 2)
    load_state_strict(target, source.state_dict(), error=ValueError)
    assert torch.equal(target.weight, source.weight)
    bad = {"weight": torch.zeros(2, 2), "extra": torch.zeros(1)}
    with pytest.raises(ValueError) as err:
        load_state_strict(target, bad, error=ValueError, source="checkpoint")
    assert str(err.value) == ("missing keys: bias; unexpected keys: extra; shape-mismatched keys: "
                              "weight (checkpoint (2, 2) vs model (2, 3))")
    assert torch.equal(target.weight, source.weight)  # nothing loaded


def test_label_prototypes_are_query_parameters_with_weight_decay():
    from mlcdist.config import OptimConfig
    from mlcdist.optim import build_optimizer

    torch.manual_seed(0)
    model = build_model(cfg(arch="mlp", mlp_dims=[8], head_dims=[8, 6], head_bn=False), num_classes=5,
                        in_dim=4, prototypes=True)
    weight = model.query.prototypes.weight
    bound = (6 / (5 + 6)) ** 0.5  # Xavier-uniform, as the study
    assert weight.shape == (5, 6) and weight.abs().max() <= bound and weight.std() > bound / 3
    assert "prototypes.weight" in model.query.state_dict()  # saved with the query (checkpoints)
    z, p = model.query(torch.randn(3, 4), with_prototypes=True)
    torch.testing.assert_close(p.norm(dim=1), torch.ones(5))
    opt = build_optimizer(OptimConfig(name="adamw", weight_decay=0.01), model.query)
    decayed = [q for g in opt.param_groups if g["weight_decay"] > 0 for q in g["params"]]
    assert any(q is weight for q in decayed)  # the study does not exclude them from weight decay
    plain = build_model(cfg(arch="mlp", mlp_dims=[8], head_dims=[8, 6], head_bn=False), num_classes=5, in_dim=4)
    with pytest.raises(ValueError, match="without prototypes"):
        plain.query(torch.randn(3, 4), with_prototypes=True)


def test_ema_views_built_once_still_update_the_live_key_encoder():
    """EmaViews (single process) keeps aligned lists from the start; an update through them
    moves the key encoder's own parameters, and equals one through ema_views."""
    from mlcdist.parallel import EmaViews, Strategy, ema_views

    torch.manual_seed(0)
    query, key = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    twin, initial = copy.deepcopy(key), key.weight.detach().clone()
    views = EmaViews(None, Strategy.SINGLE, query, key)
    for step in range(3):
        with torch.no_grad():
            query.weight.add_(1.0)  # the optimizer steps the query in place
        with views() as (k, q):
            ema_update_(k, q, 0.9)
        with ema_views(None, Strategy.SINGLE, query, twin) as (k, q):
            ema_update_(k, q, 0.9)
    assert torch.equal(key.weight, twin.weight) and torch.equal(key.bias, twin.bias)
    assert not torch.equal(key.weight, initial)

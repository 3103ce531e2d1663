"""The fine-tuning objectives: drafter CE on scales 1..N, refiner KD with the lambda schedule."""
import pytest
import torch
import torch.nn.functional as F

from training.losses import RefinerLoss, drafter_ce, kd_lambda, kl_teacher_student, scale_weights
from tiny import tiny_pair, tiny_var_like


def gt_batch(vae, var, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(B, 3, 8, 8, generator=g) * 2 - 1
    tokens = vae.img_to_tokens(img)
    labels = torch.randint(0, var.config.num_classes + 1, (B,), generator=g)
    return labels, vae.tokens_to_var_input(tokens), torch.cat(tokens, 1)


@torch.no_grad()
def test_drafter_ce_ignores_logits_after_scale_n(pair):
    vae, var = pair
    labels, inputs, gt = gt_batch(vae, var)
    offs, N = var.config.offsets, 2
    logits = var(labels, inputs)
    ce = drafter_ce(logits, gt, N, offs)
    later = logits.clone()
    later[:, offs[N]:] += torch.randn_like(later[:, offs[N]:]) * 10
    assert torch.equal(drafter_ce(later, gt, N, offs), ce)
    earlier = logits.clone()
    earlier[:, offs[N] - 1] += torch.randn_like(earlier[:, 0]) * 10
    assert not torch.allclose(drafter_ce(earlier, gt, N, offs), ce)
    # the forward pass that stops after scale N gives the same loss (block-causal attention)
    short = var(labels, inputs, stop_scale=N)
    assert short.shape[1] == offs[N]
    torch.testing.assert_close(drafter_ce(short, gt, N, offs), ce)
    manual = F.cross_entropy(logits[:, :offs[N]].reshape(-1, logits.shape[-1]), gt[:, :offs[N]].reshape(-1))
    torch.testing.assert_close(ce, manual)
    with pytest.raises(ValueError, match="scales 1..3"):
        drafter_ce(short, gt, 3, offs)


@torch.no_grad()
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_refiner_identical_to_teacher_has_zero_kd(temperature):
    vae, teacher = tiny_pair(depth=3)
    student = tiny_var_like(vae, depth=3, seed=0)  # same seed and depth: the same weights
    student.load_state_dict(teacher.state_dict())
    labels, inputs, gt = gt_batch(vae, teacher)
    loss_fn = RefinerLoss(2, teacher.config.offsets, temperature)
    for lam in (1.0, 0.3, 0.0):
        loss, parts = loss_fn(student(labels, inputs), teacher(labels, inputs), gt, lam)
        assert abs(loss.item()) < 1e-6 and abs(parts["kd"].item()) < 1e-6
    other = tiny_var_like(vae, depth=2, seed=7)
    assert loss_fn(other(labels, inputs), teacher(labels, inputs), gt, 1.0)[0] > 1e-2


def test_kl_direction_is_teacher_to_student():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g) * 3
    p_t = t.softmax(-1)
    expected = (p_t * (p_t.log() - s.log_softmax(-1))).sum(-1)
    torch.testing.assert_close(kl_teacher_student(s, t), expected)
    reverse = (s.softmax(-1) * (s.log_softmax(-1) - t.log_softmax(-1))).sum(-1)
    assert not torch.allclose(kl_teacher_student(s, t), reverse)
    T = 2.0  # softened distributions, times T^2
    p_tT = (t / T).softmax(-1)
    torch.testing.assert_close(kl_teacher_student(s, t, T),
                               (p_tT * (p_tT.log() - (s / T).log_softmax(-1))).sum(-1) * T * T)


def test_lambda_schedule_weights_drafted_scales_from_one_to_zero():
    total, offs, N = 10, (0, 1, 5, 14, 30), 2
    assert kd_lambda(0, total) == 1.0 and kd_lambda(total - 1, total) == 0.0
    lams = [kd_lambda(s, total) for s in range(total)]
    assert all(a > b for a, b in zip(lams, lams[1:]))
    assert lams[3] == pytest.approx(1 - 3 / 9)
    start, end = scale_weights(kd_lambda(0, total), N, offs), scale_weights(kd_lambda(total - 1, total), N, offs)
    assert torch.equal(start, torch.ones(30))
    assert torch.equal(end[:offs[N]], torch.zeros(offs[N])) and torch.equal(end[offs[N]:], torch.ones(30 - offs[N]))
    assert kd_lambda(0, 1) == 1.0  # a one-step run


def test_refiner_loss_weights_scales_and_mixes_ce():
    g = torch.Generator().manual_seed(1)
    offs, N = (0, 1, 5, 14, 30), 2
    s, t = torch.randn(2, 30, 11, generator=g), torch.randn(2, 30, 11, generator=g)
    gt = torch.randint(0, 11, (2, 30), generator=g)
    loss_fn = RefinerLoss(N, offs)
    base = loss_fn(s, t, gt, 0.0)[0]
    drafted = s.clone()
    drafted[:, :offs[N]] += 5 * torch.randn(2, offs[N], 11, generator=g)
    assert torch.equal(loss_fn(drafted, t, gt, 0.0)[0], base)  # lambda 0: scales 1..N do not count
    assert loss_fn(drafted, t, gt, 1.0)[0] != loss_fn(s, t, gt, 1.0)[0]
    kl = kl_teacher_student(s, t)
    torch.testing.assert_close(loss_fn(s, t, gt, 0.5)[0], (kl * scale_weights(0.5, N, offs)).mean())
    loss, parts = RefinerLoss(N, offs, ce_weight=0.7)(s, t, gt, 0.5)
    ce = F.cross_entropy(s.transpose(1, 2), gt, reduction="none")
    torch.testing.assert_close(parts["ce"], (ce * scale_weights(0.5, N, offs)).mean())
    torch.testing.assert_close(loss, parts["kd"] + 0.7 * parts["ce"])


def test_refiner_loss_without_teacher_is_the_same_weighted_ce():
    """kd_weight 0: the control for distillation, the refiner's per-scale weights on plain cross-entropy."""
    g = torch.Generator().manual_seed(2)
    offs, N = (0, 1, 5, 14, 30), 2
    s, t = torch.randn(2, 30, 11, generator=g), torch.randn(2, 30, 11, generator=g)
    gt = torch.randint(0, 11, (2, 30), generator=g)
    loss, parts = RefinerLoss(N, offs, ce_weight=1.0, kd_weight=0.0)(s, None, gt, 0.25)
    ce = F.cross_entropy(s.transpose(1, 2), gt, reduction="none")
    torch.testing.assert_close(loss, (ce * scale_weights(0.25, N, offs)).mean())
    assert parts.keys() == {"ce"}
    mixed, parts = RefinerLoss(N, offs, ce_weight=1.0, kd_weight=0.5)(s, t, gt, 0.25)
    torch.testing.assert_close(mixed, 0.5 * parts["kd"] + parts["ce"])

"""Training objectives of CoDe's specialised fine-tuning (paper, section 3.3).

Token positions follow the flattened pyramid: scale k (0-based) holds tokens offsets[k] .. offsets[k+1]-1.
"Scales 1..N" of the paper are the first N token maps, i.e. 0-based scales 0..N-1, tokens [0, offsets[N]).
Every loss is a mean over token positions, as in VAR's training (each token weighs 1/L).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def drafter_ce(logits_BlV: torch.Tensor, gt_BL: torch.Tensor, draft_steps: int, offsets: tuple[int, ...]) -> torch.Tensor:
    """Cross-entropy on the drafter's scales 1..N only; logits past offsets[N] (if present) are ignored."""
    ed = offsets[draft_steps]
    if logits_BlV.shape[1] < ed:
        raise ValueError(f"logits cover {logits_BlV.shape[1]} tokens but scales 1..{draft_steps} need {ed}")
    V = logits_BlV.shape[-1]
    return F.cross_entropy(logits_BlV[:, :ed].reshape(-1, V).float(), gt_BL[:, :ed].reshape(-1))


def kd_lambda(step: int, total_steps: int) -> float:
    """The weight of the drafted scales in the refiner's loss: 1 at the first step, 0 at the last, linear."""
    return max(0.0, 1.0 - step / max(total_steps - 1, 1))


def scale_weights(lam: float, draft_steps: int, offsets: tuple[int, ...], device=None) -> torch.Tensor:
    """(L,) per-token weights: `lam` on scales 1..N (tokens the drafter makes), 1 on scales N+1..K."""
    w = torch.ones(offsets[-1], device=device)
    w[: offsets[draft_steps]] = lam
    return w


def kl_teacher_student(student_BLV: torch.Tensor, teacher_BLV: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(B, L) KL(teacher || student) per token = sum_v p_t (log p_t - log p_s), both softened by the temperature
    and multiplied by T^2 (Hinton et al.) so that gradients keep their size when T changes."""
    log_s = F.log_softmax(student_BLV.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_BLV.float() / temperature, dim=-1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="none").sum(-1) * temperature ** 2


@dataclass
class RefinerLoss:
    """loss = kd_weight * mean_tokens(w * KL(teacher || student)) + ce_weight * mean_tokens(w * CE(student, ground
    truth)). kd_weight 0 needs no teacher (pass None): the same per-scale weights on plain cross-entropy."""
    draft_steps: int
    offsets: tuple[int, ...]
    temperature: float = 1.0
    ce_weight: float = 0.0
    kd_weight: float = 1.0

    def __call__(self, student_BLV: torch.Tensor, teacher_BLV: torch.Tensor | None, gt_BL: torch.Tensor,
                 lam: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        w_L = scale_weights(lam, self.draft_steps, self.offsets, student_BLV.device)
        ce_BL = F.cross_entropy(student_BLV.float().transpose(1, 2), gt_BL, reduction="none")
        ce = (ce_BL * w_L).mean()
        if not self.kd_weight:
            return self.ce_weight * ce, {"ce": ce.detach()}
        kd = (kl_teacher_student(student_BLV, teacher_BLV, self.temperature) * w_L).mean()
        loss = kd if self.kd_weight == 1 else self.kd_weight * kd
        loss = loss + self.ce_weight * ce if self.ce_weight else loss
        return loss, {"kd": kd.detach(), "ce": ce.detach()}

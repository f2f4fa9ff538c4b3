"""Deep Token (Qi et al. 2024): -sum_t (2/beta_t) log sigmoid(beta_t d_t) / N, d_t the log-ratio to
the starting model, with large betas on the first response tokens."""

from __future__ import annotations

from dss.errors import UserError
from dss.methods.base import Objective, register


@register
class DeepToken(Objective):
    name, label, order, tables = "deep_token", "Deep Token", 70, ("table1",)

    @classmethod
    def settings(cls) -> dict:
        return {"deep_token_betas": (0.5, 2.0, 5, 0.1)}  # first token, tokens 2..N, N, after

    @classmethod
    def check_settings(cls, config) -> None:
        betas = config.objective.deep_token_betas
        if len(betas) != 4 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and b > 0 for b in betas):
            raise UserError(f"config.objective.deep_token_betas = {tuple(betas)!r}: four positive numbers "
                            "(first token's beta, tokens 2..N's, N, later tokens')")

    def needs_ref_logp(self) -> bool:
        return True

    def loss(self, logp, full_kl, batch, normalizer):
        from dss import objectives

        first, early, early_end, rest = self.config.objective.deep_token_betas
        betas = objectives.deep_token_betas(batch["loss_mask"], first=first, early=early, early_end=early_end,
                                            rest=rest)
        return objectives.deep_token_from_terms(logp, batch["loss_mask"], batch["ref_logp"], betas, normalizer)

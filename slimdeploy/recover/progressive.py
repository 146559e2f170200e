"""Pruning while LoRA trains: LoRAPrune's iterative mode and LoRAShear's progressive mode.

Groups are masked, not sliced, during training: a mask multiplies the *input* of o_proj (per query head) and
down_proj (per MLP channel), which is exactly removing them (tests/test_prune_invariants.py). After merge
the masks are written into the weights and the recover stage hands back the plan that slices them away.

- LoRAPrune (iterative): every `update_every` steps, recompute the masks from the LoRA-gradient importance
  (EMA over steps) at the sparsity of a cubic schedule s_t = s (1 - (1 - t / T)^3), T = `prune_fraction`
  of the steps; masks only grow.
- LoRAShear (progressive): `periods` periods over the first `prune_fraction` of the steps, then recovery
  with the final masks; at the start of period p the least salient groups up to
  ratio * (p + 1) / P are chosen and their mask decays linearly to zero over the period while LoRA on the
  kept groups absorbs their knowledge; at the end of each period LoRA is merged into the weights and fresh
  adapters start. Dynamic data adaptor: with several data sources, the sampling weights are re-set at each
  period end in proportion to how much each source's loss degraded relative to the dense model.
"""

from __future__ import annotations

import torch

from slimdeploy.analyze.adapters import decoder_layers, layer_layout, linears
from slimdeploy.analyze.groups import members
from slimdeploy.prune.api import make_budget
from slimdeploy.prune.plan import LayerPlan, PrunePlan, make_plan, predict_params, select_heads, top
from slimdeploy.score.criteria import block_sums
from slimdeploy.score.loraprune import accumulate_lora_importance


class MaskSet:
    """Per-layer masks on the inputs of o_proj (heads) and down_proj (channels), as forward pre-hooks."""

    def __init__(self, model):
        layers = decoder_layers(model)
        self.head = [torch.ones(layer_layout(ly).heads) for ly in layers]
        self.mlp = [torch.ones(layer_layout(ly).intermediate) for ly in layers]
        self.handles: list = []

    def attach(self, model) -> None:
        """Hook the current o/down modules (re-attach after PEFT wraps or unwraps them)."""
        self.remove()
        for i, ly in enumerate(decoder_layers(model)):
            hd = layer_layout(ly).head_dim
            lin = linears(ly)
            self.handles.append(
                lin["o"].register_forward_pre_hook(
                    lambda m, a, i=i, hd=hd: (a[0] * self.head[i].repeat_interleave(hd).to(a[0].dtype),)
                )
            )
            self.handles.append(
                lin["down"].register_forward_pre_hook(lambda m, a, i=i: (a[0] * self.mlp[i].to(a[0].dtype),))
            )

    def set_from_plan(self, plan: PrunePlan, value: float = 0.0, only_new: bool = False) -> None:
        """Removed groups of `plan` get mask `value` (kept groups 1); with only_new, already-zero ones stay 0."""
        for i, lp in enumerate(plan.layers):
            if lp is None:
                continue
            mlp = torch.full_like(self.mlp[i], value)
            mlp[lp.mlp_keep] = 1.0
            head = torch.full_like(self.head[i], value)
            head[lp.heads_keep] = 1.0
            if only_new:
                mlp = torch.where(self.mlp[i] == 0, self.mlp[i], mlp)
                head = torch.where(self.head[i] == 0, self.head[i], head)
            self.mlp[i], self.head[i] = mlp, head

    @torch.no_grad()
    def write_into(self, model) -> None:
        """Zero the input columns the masks zero, in every weight reading those inputs (exact: x * m @ W.T
        equals x @ (W * m).T, for the frozen base and each LoRA A alike)."""
        for i, ly in enumerate(decoder_layers(model)):
            hd = layer_layout(ly).head_dim
            lin = linears(ly)
            for name, mask in (("o", self.head[i].repeat_interleave(hd)), ("down", self.mlp[i])):
                mod = lin[name]
                weights = [mod.base_layer.weight] if hasattr(mod, "base_layer") else [mod.weight]
                weights += [a.weight for a in getattr(mod, "lora_A", {}).values()]
                for w in weights:
                    w.mul_(mask.to(w.dtype).to(w.device))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def cubic_sparsity(step: int, total: int, final: float) -> float:
    return final * (1 - (1 - min(1.0, step / max(1, total))) ** 3)


def lora_group_scores(model, ema: list[dict]) -> list[dict]:
    """Group scores from the LoRA element importance maps (sums over each group's rows/columns)."""
    out = []
    for li, ly in enumerate(decoder_layers(model)):
        lay = layer_layout(ly)
        scores = {}
        for kind in ("mlp", "head", "kv"):
            total = None
            for mem in members(kind, lay):
                E = ema[li].get(mem.linear)
                s = (
                    torch.zeros(mem.blocks.shape[0], dtype=torch.float64)
                    if E is None
                    else block_sums(E, mem.blocks, mem.axis).double()
                )
                total = s if total is None else total + s
            scores[kind] = total
        out.append(scores)
    return out


class PruneDuringTraining:
    """Shared plumbing: EMA of LoRA importance, plans at a given sparsity, the final plan for merge."""

    def __init__(self, model, pcfg, total_steps: int, beta: float = 0.9):
        """`model` is the dense model before adapters: ratios and parameter counts are relative to it."""
        self.pcfg, self.total, self.beta = pcfg, total_steps, beta
        self.budget = make_budget(model)
        self.masks = MaskSet(model)
        self.ema: list[dict] = [{} for _ in self.masks.mlp]
        self.history: list[dict] = []
        self.model = model
        self.final_widths: list | None = None

    def attach(self, peft_model) -> None:
        self.model = peft_model.base_model.model
        self.masks.attach(self.model)

    def after_backward(self, peft_model) -> None:
        layers = [linears(ly) for ly in decoder_layers(peft_model.base_model.model)]
        accumulate_lora_importance(layers, self.ema, self.beta)

    def plan_at(self, ratio: float) -> PrunePlan | None:
        """Groups to remove at `ratio` (<= the final ratio). The final plan is allocated once (its widths fixed
        by the first call); earlier ratios move each width monotonically towards it, so a group removed once is
        never brought back and the head/KV split never changes between updates."""
        if ratio <= 0.002:
            return None
        p = self.pcfg
        scores = lora_group_scores(self.model, self.ema)
        for li in range(len(scores)):  # masked groups must stay removed: they score below everything
            scores[li]["mlp"] = torch.where(self.masks.mlp[li] == 0, -1.0, scores[li]["mlp"])
            heads0 = self.masks.head[li] == 0
            scores[li]["head"] = torch.where(heads0, -1.0, scores[li]["head"])
            q = len(heads0) // len(scores[li]["kv"])
            kv0 = heads0.view(-1, q).all(1)
            scores[li]["kv"] = torch.where(kv0, -1.0, scores[li]["kv"])
        if self.final_widths is None:
            kinds = set(p.structures) - {"layer"}
            final = make_plan(scores, self.budget, p.ratio, kinds, config=p.model_copy(update={"layer_share": None}))
            self.final_widths = [
                None if lp is None else (len(lp.kv_keep), len(lp.heads_keep) // len(lp.kv_keep), len(lp.mlp_keep))
                for lp in final.layers
            ]
        f = min(1.0, ratio / p.ratio)
        layers = []
        for li, w in enumerate(self.final_widths):
            if w is None:
                layers.append(None)
                continue
            lay = self.budget.layouts[li]
            k = lay.kv_heads - round(f * (lay.kv_heads - w[0]))
            r = lay.q_per_kv - round(f * (lay.q_per_kv - w[1]))
            m = lay.intermediate - round(f * (lay.intermediate - w[2]))
            heads, kv = select_heads(scores[li]["head"], scores[li]["kv"], k, r, lay.q_per_kv)
            layers.append(LayerPlan(mlp_keep=top(scores[li]["mlp"], m), heads_keep=heads, kv_keep=kv))
        live = list(range(len(layers)))
        return PrunePlan(layers=layers, predicted_params=predict_params(self.budget, layers, live))

    def finish(self, peft_model) -> PrunePlan:
        """Masks at the final ratio, written into the weights (the columns of o_proj / down_proj that a zero
        mask multiplies, in the base and LoRA A): the model computes the same without hooks, so it saves,
        reloads and merges like any other. Returns the plan that slices those zero groups away."""
        final = self.plan_at(self.pcfg.ratio)
        self.masks.set_from_plan(final)
        self.masks.write_into(peft_model.base_model.model)
        self.masks.remove()
        return final


class LoRAPruneIterative(PruneDuringTraining):
    def __init__(self, model, pcfg, total_steps: int, update_every: int, prune_fraction: float):
        super().__init__(model, pcfg, total_steps)
        self.every, self.horizon = update_every, max(1, int(prune_fraction * total_steps))

    def after_step(self, peft_model, step: int):
        if step % self.every == 0 and step <= self.horizon:
            s = cubic_sparsity(step, self.horizon, self.pcfg.ratio)
            plan = self.plan_at(s)
            if plan is not None:
                self.masks.set_from_plan(plan)
                self.history.append({"step": step, "sparsity": round(s, 4), "params_if_sliced": plan.predicted_params})
        return None


class LoRAShearProgressive(PruneDuringTraining):
    """Progressive periods over the first `prune_fraction` of the steps, then recovery with the final masks.

    Without the recovery phase the last period's groups reach zero on the very last step and nothing
    absorbs their loss (measured: 1.9x dense perplexity at 20%); LoRAShear likewise follows its progressive
    pruning with a knowledge-recovery stage.
    """

    def __init__(self, model, pcfg, total_steps: int, periods: int, prune_fraction: float = 0.5):
        super().__init__(model, pcfg, total_steps)
        self.periods = periods
        self.horizon = max(periods, int(prune_fraction * total_steps))
        self.period_len = max(1, self.horizon // periods)
        self.new_plan: PrunePlan | None = None

    def period_of(self, step: int) -> int:
        return step // self.period_len

    def after_step(self, peft_model, step: int):
        """Returns 'merge' at the end of each period (the loop then merges LoRA and starts fresh adapters)."""
        p, pos = self.period_of(step - 1), (step - 1) % self.period_len + 1
        if p >= self.periods:  # recovery phase: masks stay as the last period left them
            return None
        if pos == max(1, self.period_len // 10):  # saliency after a short warm-up
            self.new_plan = self.plan_at(self.pcfg.ratio * (p + 1) / self.periods)
        if self.new_plan is not None:
            value = max(0.0, 1 - pos / self.period_len)
            self.masks.set_from_plan(self.new_plan, value=value, only_new=True)
        if pos == self.period_len and step < self.total:
            if self.new_plan is not None:
                self.masks.set_from_plan(self.new_plan, value=0.0)
                self.history.append({"step": step, "period": p + 1, "params_if_sliced": self.new_plan.predicted_params})
            self.new_plan = None
            return "merge"
        return None

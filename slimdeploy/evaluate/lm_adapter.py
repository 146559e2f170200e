"""lm-eval's HFLM with log-likelihoods scored where they are read.

HFLM computes fp32 vocabulary logits and their log_softmax for every position of every padded request, then
keeps the continuation's few. With SmolLM2's 49k vocabulary that head and softmax dominated multiple-choice
tasks with long contexts (HellaSwag: ~100 context tokens, ~20 scored). Here the decoder runs once per batch
and the LM head only at the continuation's positions. Tokenization, truncation, prefix tokens and the result
format are HFLM's own (only `_loglikelihood_tokens` is replaced), so accuracies are the harness's.
"""

from __future__ import annotations

import torch
from lm_eval.models.huggingface import HFLM

from slimdeploy.evaluate.perplexity import _plain_head


class SlicedHeadLM(HFLM):
    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        model = self.model
        if self.backend != "causal" or not _plain_head(model):
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        batch = override_bs or (self.batch_size if isinstance(self.batch_size, int) else 16)
        # longest first, as HFLM does: batches of similar lengths pad little
        order = sorted(range(len(requests)), key=lambda i: -(len(requests[i][1]) + len(requests[i][2])))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            for i, answer in zip(idx, self._score(model, [requests[i] for i in idx]), strict=True):
                results[i] = answer
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
        return results

    def _score(self, model, chunk) -> list[tuple[float, bool]]:
        """(sum of the continuation's log-probabilities, whether greedy decoding gives it) per request."""
        inputs, spans, targets = [], [], []
        for _, context_enc, continuation_enc in chunk:
            inp = (context_enc + continuation_enc)[-(self.max_length + 1) :][:-1]  # HFLM's left truncation
            inputs.append(inp)
            spans.append((len(inp) - len(continuation_enc), len(inp)))
            targets.append(torch.tensor(continuation_enc, dtype=torch.long))
        width = max(len(x) for x in inputs)
        # right padding needs no mask: a causal model never looks at the later (padding) positions
        ids = torch.zeros((len(inputs), width), dtype=torch.long)
        for row, inp in enumerate(inputs):
            ids[row, : len(inp)] = torch.tensor(inp, dtype=torch.long)
        hidden = model.get_decoder()(input_ids=ids.to(self.device)).last_hidden_state
        picked = torch.cat([hidden[row, a:b] for row, (a, b) in enumerate(spans)])
        logp = torch.log_softmax(model.get_output_embeddings()(picked).float(), dim=-1).cpu()
        out, at = [], 0
        for target in targets:
            rows = logp[at : at + len(target)]
            at += len(target)
            score = rows.gather(-1, target[:, None]).sum().item()
            out.append((float(score), bool((rows.argmax(-1) == target).all())))
        return out

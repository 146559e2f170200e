"""Serving engines, one per runtime, each timing every generated token of a batch of concurrent requests.

They run inside a worker process (worker.py), one model per process, so that each runtime keeps its own
threads and memory and the process tree can be measured. All take token-id prompts of equal length, decode
greedily with a KV cache, ignore EOS, and return (token_times, start): token_times[r][k] is the
perf_counter() time at which request r's k-th token was available.
"""

from __future__ import annotations

import time
from pathlib import Path


def has_tokenizer(path: str | Path) -> bool:
    return any((Path(path) / f).exists() for f in ("tokenizer.json", "tokenizer.model"))


def torch_generate_timed(model, prompts, output_len: int) -> tuple[list[list[float]], float]:
    """Greedy decode with a KV cache, EOS ignored; returns per-request token timestamps and the start time."""
    import torch

    with torch.no_grad():
        return _generate_timed(model, prompts, output_len)


def _generate_timed(model, prompts, output_len: int) -> tuple[list[list[float]], float]:
    from transformers import DynamicCache

    prompts = prompts.to(next(model.parameters()).device)
    cache = DynamicCache()
    start = time.perf_counter()
    out = model(input_ids=prompts, past_key_values=cache, use_cache=True)
    times = [[time.perf_counter()] for _ in range(len(prompts))]
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    for _ in range(output_len - 1):
        out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        now = time.perf_counter()
        for t in times:
            t.append(now)
    return times, start


class TorchEngine:
    """transformers model, generate loop with DynamicCache (the reference implementation)."""

    def __init__(self, path: str, dtype: str, options: dict):
        import torch

        from slimdeploy.load.model import load_model

        torch.set_num_threads(options.get("threads") or torch.get_num_threads())
        self.model = load_model(path, dtype, with_tokenizer=False).model.eval()

    def generate(self, prompts: list[list[int]], output_len: int):
        import torch

        return torch_generate_timed(self.model, torch.tensor(prompts), output_len)


class OnnxEngine:
    """onnxruntime on slimdeploy's ONNX decoder (export/onnx.py): batched, cache fed back each step."""

    def __init__(self, path: str, dtype: str, options: dict):
        import json

        import numpy as np

        from slimdeploy.export.onnx import ort_session

        self.np = np
        self.session = ort_session(Path(path) / "model.onnx")
        io = json.loads((Path(path) / "onnx_config.json").read_text())
        self.np_dtype = {"float32": np.float32, "float16": np.float16}[io["dtype"]]
        self.cache_shapes = [(c["kv_heads"], c["head_dim"]) for c in io["cache"] for _ in (0, 1)]
        self.names = [i.name for i in self.session.get_inputs()]

    def generate(self, prompts: list[list[int]], output_len: int):
        np = self.np
        batch = len(prompts)
        cache = [np.zeros((batch, kv, 0, hd), dtype=self.np_dtype) for kv, hd in self.cache_shapes]
        ids = np.array(prompts, dtype=np.int64)
        times: list[list[float]] = [[] for _ in prompts]
        start = time.perf_counter()
        for _ in range(output_len):
            out = self.session.run(None, dict(zip(self.names, [ids, *cache], strict=True)))
            ids = out[0][:, -1].argmax(-1).reshape(batch, 1).astype(np.int64)
            cache = out[1:]
            now = time.perf_counter()
            for t in times:
                t.append(now)
        return times, start


class OrtGenaiEngine:
    """onnxruntime-genai package: one generator for the whole batch."""

    def __init__(self, path: str, dtype: str, options: dict):
        import numpy as np
        import onnxruntime_genai as og

        self.og, self.np = og, np
        self.model = og.Model(path)

    def generate(self, prompts: list[list[int]], output_len: int):
        og, np = self.og, self.np
        params = og.GeneratorParams(self.model)
        total = len(prompts[0]) + output_len
        params.set_search_options(do_sample=False, max_length=total, min_length=total, batch_size=len(prompts))
        times: list[list[float]] = [[] for _ in prompts]
        start = time.perf_counter()
        gen = og.Generator(self.model, params)
        gen.append_tokens(np.array(prompts, dtype=np.int32))
        for _ in range(output_len):
            gen.generate_next_token()
            now = time.perf_counter()
            for t in times:
                t.append(now)
            if gen.is_done():
                break
        return times, start


class VllmEngine:
    """vLLM's offline engine, stepped by hand so that every token gets its own timestamp."""

    def __init__(self, path: str, dtype: str, options: dict):
        from vllm import LLM

        from slimdeploy.utils.trust import remote_code_allowed

        self.llm = LLM(
            model=path,
            dtype={"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype],
            max_model_len=options["max_model_len"],
            enforce_eager=options.get("enforce_eager", True),
            # slimdeploy's own DeciLM code (hash-checked), or foreign code the user trusted explicitly
            trust_remote_code=remote_code_allowed(Path(path), options.get("trust_remote_code", False)),
            skip_tokenizer_init=not has_tokenizer(path),  # shape-only models: token ids in, token ids out
            seed=0,
        )
        self.n = 0

    def generate(self, prompts: list[list[int]], output_len: int):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        engine = self.llm.llm_engine
        params = SamplingParams(temperature=0.0, max_tokens=output_len, min_tokens=output_len, ignore_eos=True)
        ids = []
        start = time.perf_counter()
        for p in prompts:
            self.n += 1
            ids.append(str(self.n))
            engine.add_request(ids[-1], TokensPrompt(prompt_token_ids=p), params)
        times: dict[str, list[float]] = {i: [] for i in ids}
        while engine.has_unfinished_requests():
            for out in engine.step():
                now = time.perf_counter()
                seen = times[out.request_id]
                seen += [now] * (len(out.outputs[0].token_ids) - len(seen))
        return [times[i] for i in ids], start


ENGINES = {"torch": TorchEngine, "onnxruntime": OnnxEngine, "ort-genai": OrtGenaiEngine, "vllm": VllmEngine}

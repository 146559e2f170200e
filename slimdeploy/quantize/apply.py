"""quantize_model: RTN or GPTQ over every decoder linear, one decoder layer at a time; write_checkpoint: the
compressed-tensors checkpoint that transformers' `from_pretrained` and vLLM both load.

GPTQ runs layer by layer like sequential pruning: the inputs of layer l come from the already quantized
layers before it (errors do not compound unseen), its seven projections are quantized against the input
covariance of the dense layer l, then its outputs are recomputed with the quantized weights. The weights are
replaced in place by their dequantized values, which lie exactly on the grid of the returned scales, so
compressed-tensors' own compression of them recovers the codes exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from slimdeploy.analyze.adapters import decoder_layers, linears
from slimdeploy.errors import SlimdeployError
from slimdeploy.quantize.config import QuantizeConfig
from slimdeploy.quantize.maths import gptq, output_error, rtn


def _targets(model, cfg: QuantizeConfig) -> dict[str, torch.nn.Linear]:
    """Every decoder projection by its module name, less the ignored ones."""
    names = {id(m): n for n, m in model.named_modules()}
    out = {}
    for layer in decoder_layers(model):
        for lin in linears(layer).values():
            name = names[id(lin)]
            if not any(name == ig or name.endswith("." + ig) for ig in cfg.ignore):
                out[name] = lin
    if not out:
        raise SlimdeployError("nothing to quantize: every decoder projection is in `ignore`")
    for name, lin in out.items():
        group = cfg.groups
        if group is not None and lin.in_features % group:
            raise SlimdeployError(
                f"{name} has {lin.in_features} input columns, not a multiple of group_size {group}; "
                "choose a group_size that divides every width (64), or prune with round_to a multiple of it"
            )
    return out


@torch.no_grad()
def quantize_model(model, cfg: QuantizeConfig, batches: torch.Tensor | None, progress=None) -> tuple[dict, dict]:
    """Quantize `model` in place; returns (scales by module name, report with per-layer output errors)."""
    targets = _targets(model, cfg)
    scales: dict[str, torch.Tensor] = {}
    errors: dict[str, float] = {}
    if cfg.method == "rtn":
        for i, (name, lin) in enumerate(targets.items()):
            q, scales[name] = rtn(lin.weight, cfg.bits, cfg.groups)
            lin.weight.copy_(q.to(lin.weight.dtype))
            if progress:
                progress(i + 1, len(targets))
        return scales, {"method": "rtn"}
    if batches is None:
        raise SlimdeployError("GPTQ needs calibration text; give data, or use method rtn")
    from slimdeploy.score.stats import catch_layer0_inputs, layer_input_stats

    device = next(model.parameters()).device
    hidden, kwargs = catch_layer0_inputs(model, batches.to(device))
    names = {id(m): n for n, m in model.named_modules()}
    layers = decoder_layers(model)
    for li, layer in enumerate(layers):
        inputs = [h.clone() for h in hidden]
        stats = layer_input_stats(layer, hidden, kwargs, with_cov=True)  # of the dense layer's inputs
        for short, lin in linears(layer).items():
            name = names[id(lin)]
            if name not in targets:
                continue
            h = stats.inputs[short].A.to(torch.float64)
            w = lin.weight.float()
            q, scales[name] = gptq(w, h, cfg.bits, cfg.groups, damp=cfg.damp, actorder=cfg.actorder)
            errors[name] = output_error(w, q, h)
            lin.weight.copy_(q.to(lin.weight.dtype))
        for j, x in enumerate(inputs):  # the next layer sees this one's quantized outputs
            res = layer(x, **kwargs)
            hidden[j] = res[0] if isinstance(res, tuple) else res
        if progress:
            progress(li + 1, len(layers))
    return scales, {"method": "gptq", "damp": cfg.damp, "actorder": cfg.actorder, "output_error": errors}


def quantization_config(cfg: QuantizeConfig, ignore: list[str]):
    """The compressed-tensors QuantizationConfig of this scheme: every Linear but the `ignore`d module names
    (targets by class, as llm-compressor writes them: vLLM matches its fused qkv / gate_up layers that way)."""
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus, preset_name_to_scheme

    scheme = preset_name_to_scheme(cfg.scheme.upper(), ["Linear"])
    if cfg.groups is not None:
        scheme.weights.group_size = cfg.groups
    return QuantizationConfig(
        config_groups={"group_0": scheme},
        ignore=ignore,
        quantization_status=QuantizationStatus.INITIALIZED,
        format=cfg.format,
    )


@torch.no_grad()
def write_checkpoint(model, scales: dict, cfg: QuantizeConfig, out: Path, dtype: torch.dtype | None = None) -> None:
    """Attach the scheme and our scales, compress with compressed-tensors (in place: the model is spent) and
    save the checkpoint and its quantization_config into `out`. `dtype`: what the unquantized tensors
    (embeddings, norms, the LM head) are stored in, the source checkpoint's own; scales stay fp32, so the codes
    compressed-tensors recomputes from the dequantized weights are exactly ours."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import apply_quantization_config

    kept = sorted(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in scales)
    apply_quantization_config(model, quantization_config(cfg, kept))
    modules = dict(model.named_modules())
    for name, scale in scales.items():
        lin = modules[name]
        lin.weight_scale.data.copy_(scale.to(lin.weight_scale.dtype).reshape(lin.weight_scale.shape))
        lin.weight_zero_point.data.zero_()
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format=cfg.format)
    compressor.compress_model(model)
    if dtype is not None and dtype != torch.float32:
        for name, module in model.named_modules():
            if name in scales:
                continue
            for p in module.parameters(recurse=False):
                if p.is_floating_point():
                    p.data = p.data.to(dtype)
        model.config.dtype = dtype
    model.save_pretrained(out)
    compressor.update_config(str(out))
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"]["slimdeploy"] = {"method": cfg.method, "scheme": cfg.scheme}
    (out / "config.json").write_text(json.dumps(config, indent=2))

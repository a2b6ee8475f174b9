"""Load quantkit's FP8 and GPTQ artifacts on a CUDA GPU and compare them with the source.

Run on a machine with a GPU (it is not part of the test suite):

    python scripts/gpu_check_safetensors.py --tokenizer DIR --out OUT

It builds a Llama-3.1-shaped model with random weights (no weights can be downloaded) and
the real Llama 3.1 tokenizer from DIR, converts it with `quantkit.convert` to FP8_DYNAMIC,
FP8 (static) and GPTQ W4A16 (llmcompressor uses the GPU when there is one), loads each
artifact with transformers on the GPU, and reports, against the BF16 source on the same
GPU: mean KL divergence and top-1 agreement of next-token distributions over a few
hundred positions, and greedy-generation throughput. Results go to OUT/gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path


def build_source(tokenizer_dir: Path, out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=128256, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
        num_attention_heads=16, num_key_value_heads=4, head_dim=64, max_position_embeddings=8192,
        rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128009,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger weights than the init so the logits are not flat
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.05)
    model.to(torch.bfloat16).save_pretrained(out)
    for item in tokenizer_dir.iterdir():
        if item.is_file() and item.name != "config.json":
            shutil.copy(item, out / item.name)
    return out


def logits_on_gpu(folder: Path, ids):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, device_map="cuda")
    with torch.no_grad():
        logits = model(ids.to("cuda")).logits.float()
    start = time.perf_counter()
    out = model.generate(ids[:, :16].to("cuda"), max_new_tokens=64, do_sample=False,
                         min_new_tokens=64)  # fmt: skip
    torch.cuda.synchronize()
    tps = (out.shape[1] - 16) / (time.perf_counter() - start)
    layer = model.model.layers[0].self_attn.q_proj
    kind = f"{type(layer).__module__}.{type(layer).__name__}"
    del model
    torch.cuda.empty_cache()
    return logits, tps, kind


def fp8_kernel_check(folder: Path, tokens: int = 512) -> dict:
    """Multiply with the artifact's FP8 weights on the GPU's FP8 tensor cores
    (torch._scaled_mm, as vLLM's W8A8 path on sm_89+ does: per-token dynamic activation
    scales, per-channel weight scales) and compare with the BF16 product of the dequantized
    weights. Shows the stored FP8 tensors and scales are usable as they are."""
    import torch
    from safetensors import safe_open

    shard = next(folder.glob("*.safetensors"))
    errors = []
    with safe_open(str(shard), framework="pt", device="cuda") as fh:
        names = [
            n
            for n in fh.keys()  # noqa: SIM118 - safe_open is not iterable
            if n.endswith(("q_proj.weight", "down_proj.weight"))
        ]
        for name in names[:4]:
            weight = fh.get_tensor(name)
            scale = fh.get_tensor(name.replace(".weight", ".weight_scale")).float()
            assert weight.dtype == torch.float8_e4m3fn, weight.dtype
            x = torch.randn(tokens, weight.shape[1], device="cuda", dtype=torch.bfloat16)
            x_scale = x.abs().amax(-1, keepdim=True).float() / 448.0
            xq = (x.float() / x_scale).to(torch.float8_e4m3fn)
            y = torch._scaled_mm(xq, weight.t(), scale_a=x_scale, scale_b=scale.reshape(1, -1),
                                 out_dtype=torch.bfloat16)  # fmt: skip
            ref = x.float() @ (weight.float() * scale.reshape(-1, 1)).t()
            errors.append(float((y.float() - ref).norm() / ref.norm()))
    return {"layers": len(errors), "relative_error_max": max(errors)}


def compare(ref, art) -> dict:
    import torch

    logp_ref = torch.log_softmax(ref, -1)
    logp_art = torch.log_softmax(art, -1)
    kld = (logp_ref.exp() * (logp_ref - logp_art)).sum(-1)
    top1 = (ref.argmax(-1) == art.argmax(-1)).float().mean()
    return {"kld_mean": float(kld.mean()), "top1_agreement": float(top1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import torch

    import quantkit

    work = Path("/tmp/quantkit-gpu-check")  # big files stay out of OUT
    work.mkdir(parents=True, exist_ok=True)
    source = build_source(args.tokenizer, work / "source")
    ids = torch.randint(1000, 100000, (1, 256), generator=torch.Generator().manual_seed(1))
    ref, ref_tps, ref_kind = logits_on_gpu(source, ids)
    report = {
        "device": torch.cuda.get_device_name(0),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "torch": torch.__version__,
        "source": {"tokens_per_second": ref_tps, "layer": ref_kind},
    }
    small_calibration = quantkit.CalibrationOptions(samples=32, seq_len=256)
    targets = {
        "fp8_dynamic": dict(format="fp8", quant="FP8_DYNAMIC"),
        "fp8_static": dict(format="fp8", quant="FP8", calibration=small_calibration),
        "gptq_w4a16": dict(format="gptq", quant="W4A16", calibration=small_calibration),
    }  # fmt: skip
    for name, options in targets.items():
        start = time.perf_counter()
        no_eval = quantkit.EvalOptions(enabled=False)
        result = quantkit.convert(source, out=work / name, evaluation=no_eval, **options)
        convert_s = time.perf_counter() - start
        art, tps, kind = logits_on_gpu(result.out, ids)
        report[name] = {
            "convert_seconds": convert_s,
            "checks": {c["name"]: c["passed"] for c in result.checks},
            "tokens_per_second": tps,
            "layer": kind,
            **compare(ref, art),
        }
        if name == "fp8_dynamic":
            report[name]["scaled_mm"] = fp8_kernel_check(result.out)
        print(name, json.dumps(report[name]), flush=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

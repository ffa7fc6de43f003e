#!/usr/bin/env python3
"""Builds the reference fixtures that core/tests/reference_parity.rs checks the engine against.

A developer step, not CI: CI only reads what this wrote and committed. It needs Python with
`torch`, `transformers` and `safetensors` (CPU is enough), e.g. in a virtual environment outside
the repository:

    python3 -m venv ../venv-ref && ../venv-ref/bin/pip install torch transformers safetensors
    ../venv-ref/bin/python scripts/make-reference.py --only deepseek_v2_plain

For each variant it builds a tiny random model with Hugging Face `transformers` (hidden 64,
3 layers with a dense first layer where the family has one, 8 routed experts, top-2, a shared
expert where the family has one, vocabulary 1024), with fixed seeds and every weight a bf16 value,
and writes into `tests/fixtures/reference/<name>/`:

- `config.json` and `model.safetensors`, exactly as `save_pretrained(safe_serialization=True)`
  writes them for a bf16 model (transformers keeps the MoE router in float32; its values are bf16
  values, so the loader converts it exactly); any other file it writes is deleted.
- `reference.json`: the versions used, and for 3 fixed prompts (token ids) the greedy
  continuation of 16 tokens with, per generated position, the chosen token's log-probability and
  the top-1 margin (logit of the best minus the second best), and a teacher-forced pass: a fixed
  continuation of 12 tokens off the greedy path (at step i the (2 + i % 3)-th most likely token,
  so the engine's 20 reported alternatives include it) and the log-probability of each of its
  tokens from one forward pass over prompt + continuation.

The reference is computed in float32 from the same bf16-representable weights, since the engine
widens bf16 weights to f32 and computes in f32, with what the attention caches (MLA's compressed
latent and rotary key; GQA's rotated keys and values) rounded to bf16, since the engine's KV cache
stores bf16: the remaining difference is the order of sums, which the test's tolerances cover.
`f32_kv` in `reference.json` holds the same passes with the cache kept in float32, so the size of
the bf16 cache's effect is on record (the test reports the engine's distance from it).

Commit a variant's directory only once the engine passes the parity test on it (see the README).
`--list` prints the variants and what the engine does with each.
"""

import argparse
import contextlib
import importlib
import json
import math
import shutil
import sys
import zlib
from pathlib import Path

SEED = 20260101
VOCAB = 1024
HIDDEN = 64
LAYERS = 3
GEN_TOKENS = 16

PROMPTS = [
    [1, 2, 3, 4, 5],
    [900, 17, 17, 300],
    [(i * 37 + 11) % VOCAB for i in range(21)],
]
TEACHER_TOKENS = 12

DEEPSEEK = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    intermediate_size=128,
    moe_intermediate_size=32,
    num_hidden_layers=LAYERS,
    num_attention_heads=4,
    num_key_value_heads=4,
    q_lora_rank=None,
    kv_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=16,
    n_routed_experts=8,
    n_shared_experts=1,
    num_experts_per_tok=2,
    first_k_dense_replace=1,
    max_position_embeddings=256,
)
QWEN = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    intermediate_size=128,
    moe_intermediate_size=32,
    num_hidden_layers=LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    num_experts=8,
    num_experts_per_tok=2,
    mlp_only_layers=[0],
    max_position_embeddings=256,
)

# name -> (config class, config arguments, what the engine does with it today)
VARIANTS = {
    "deepseek_v2_plain": ("DeepseekV2Config", dict(DEEPSEEK), "served"),
    "deepseek_v2_yarn": (
        "DeepseekV2Config",
        dict(
            DEEPSEEK,
            rope_parameters=dict(
                rope_type="yarn",
                rope_theta=10000.0,
                factor=4.0,
                original_max_position_embeddings=64,
                beta_fast=32.0,
                beta_slow=1.0,
                mscale=0.707,
                mscale_all_dim=0.707,
            ),
        ),
        "served",
    ),
    "deepseek_v2_qlora": (
        "DeepseekV2Config",
        dict(DEEPSEEK, q_lora_rank=24),
        "served",
    ),
    "deepseek_v2_scaled": (
        "DeepseekV2Config",
        dict(DEEPSEEK, routed_scaling_factor=2.5),
        "served",
    ),
    "deepseek_v2_group_limited": (
        "DeepseekV2Config",
        dict(DEEPSEEK, topk_method="group_limited_greedy", n_group=4, topk_group=1),
        "served",
    ),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        dict(QWEN, norm_topk_prob=True),
        "served",
    ),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        dict(QWEN, shared_expert_intermediate_size=32),
        "served",
    ),
    "mixtral": (
        "MixtralConfig",
        dict(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            intermediate_size=32,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            num_local_experts=8,
            num_experts_per_tok=2,
            max_position_embeddings=256,
        ),
        "served",
    ),
    "deepseek_v3": (
        "DeepseekV3Config",
        dict(
            DEEPSEEK,
            n_group=4,
            topk_group=2,
            routed_scaling_factor=2.5,
            rope_interleave=True,
        ),
        "served",
    ),
    "deepseek_v3_half": (
        "DeepseekV3Config",
        dict(
            DEEPSEEK,
            n_group=4,
            topk_group=2,
            q_lora_rank=24,
            rope_interleave=False,
        ),
        "served",
    ),
}


def init_weights(model, torch, seed):
    """Weights big enough that the distributions are peaked (transformers' own init, std 0.02,
    gives near-uniform logits and margins lost in bf16 noise), then rounded to bf16 values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            shape = tuple(p.shape)
            if "norm" in name:
                v = 1.0 + 0.1 * torch.randn(shape, generator=g)
            elif "embed_tokens" in name:
                v = torch.randn(shape, generator=g)
            elif name.startswith("lm_head"):
                v = torch.randn(shape, generator=g) * (2.0 / math.sqrt(shape[-1]))
            elif name.endswith(".bias") or "correction_bias" in name:
                v = 0.1 * torch.randn(shape, generator=g)
            elif name.endswith("mlp.gate.weight") or name.endswith("router.weight"):
                v = torch.randn(shape, generator=g) * (2.0 / math.sqrt(shape[-1]))
            else:
                v = torch.randn(shape, generator=g) / math.sqrt(shape[-1])
            p.copy_(v.to(torch.bfloat16).to(p.dtype))
        for name, b in model.named_buffers():
            if "correction_bias" in name:
                b.copy_((0.1 * torch.randn(tuple(b.shape), generator=g)).to(torch.bfloat16).to(b.dtype))


def logits_of(model, torch, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double()


# What each family's attention caches, as a function to round to bf16 (the engine's KV cache
# dtype): MLA the compressed latent and rotary key (`expand_kv`'s inputs), GQA the rotated keys
# and the values (`eager_attention_forward`'s, before the heads are repeated in it).
KV_HOOKS = {
    "DeepseekV2Config": ("deepseek_v2", "DeepseekV2Attention.expand_kv", (1, 2)),
    "DeepseekV3Config": ("deepseek_v3", "DeepseekV3Attention.expand_kv", (1, 2)),
    "Qwen3MoeConfig": ("qwen3_moe", "eager_attention_forward", (2, 3)),
    "Qwen2MoeConfig": ("qwen2_moe", "eager_attention_forward", (2, 3)),
    "MixtralConfig": ("mixtral", "eager_attention_forward", (2, 3)),
}


@contextlib.contextmanager
def bf16_kv_cache(cls_name, torch):
    """Runs the reference with what its attention caches rounded to bf16, as the engine stores
    it; everything else stays float32."""
    family, attr, args = KV_HOOKS[cls_name]
    mod = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    owner, fn_name = (mod, attr) if "." not in attr else (getattr(mod, attr.split(".")[0]), attr.split(".")[1])
    orig = getattr(owner, fn_name)

    def rounded(*a, **kw):
        a = list(a)
        for i in args:
            a[i] = a[i].to(torch.bfloat16).to(a[i].dtype)
        return orig(*a, **kw)

    setattr(owner, fn_name, rounded)
    try:
        yield
    finally:
        setattr(owner, fn_name, orig)


def reference(model, torch, prompt):
    ids = list(prompt)
    tokens, logprobs, margins = [], [], []
    for _ in range(GEN_TOKENS):
        last = logits_of(model, torch, ids)[-1]
        top = torch.topk(last, 2)
        t = int(top.indices[0])
        lp = torch.log_softmax(last, dim=-1)
        tokens.append(t)
        logprobs.append(float(lp[t]))
        margins.append(float(top.values[0] - top.values[1]))
        ids.append(t)
    # The forced continuation leaves the greedy path: at step i the reference's (2 + i % 3)-th
    # most likely token, so that it is among the 20 alternatives the engine reports.
    ids = list(prompt)
    for i in range(TEACHER_TOKENS):
        last = logits_of(model, torch, ids)[-1]
        ids.append(int(torch.topk(last, 2 + i % 3).indices[-1]))
    cont = ids[len(prompt):]
    full = logits_of(model, torch, ids)
    lp = torch.log_softmax(full, dim=-1)
    teacher = [float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(cont)]
    return {
        "prompt": list(prompt),
        "greedy": {"tokens": tokens, "logprobs": logprobs, "margins": margins},
        "teacher": {"continuation": cont, "logprobs": teacher},
    }


def build(name, out_root, torch, transformers):
    cls_name, kwargs, engine = VARIANTS[name]
    cfg = getattr(transformers, cls_name)(**kwargs)
    cfg._attn_implementation = "eager"
    torch.manual_seed(SEED)
    ref = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    # From the name alone, so adding a variant leaves the others' weights as they are.
    seed = SEED + zlib.crc32(name.encode()) % 100_000
    init_weights(ref, torch, seed)
    ref.eval()
    with bf16_kv_cache(cls_name, torch):
        prompts = [reference(ref, torch, p) for p in PROMPTS]
    f32 = [reference(ref, torch, p) for p in PROMPTS]

    # Saved the way a bf16 model is: transformers decides which tensors stay float32.
    bf16 = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    missing, unexpected = bf16.load_state_dict(ref.state_dict(), strict=False)
    if missing or unexpected:
        sys.exit(f"{name}: state dicts differ: missing {missing}, unexpected {unexpected}")
    for (n, a), b in zip(ref.state_dict().items(), bf16.state_dict().values()):
        if not torch.equal(a, b.to(a.dtype)):
            sys.exit(f"{name}: {n} changed when saved in bf16")
    out = out_root / name
    if out.exists():
        shutil.rmtree(out)
    bf16.save_pretrained(out, safe_serialization=True)
    for f in out.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            f.unlink() if f.is_file() else shutil.rmtree(f)
    doc = {
        "variant": name,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "seed": seed,
        "compute": "float32 from bf16-representable weights, eager attention, no KV cache; "
        "what the attention caches rounded to bf16 (as the engine's KV cache stores it)",
        "engine_today": engine,
        "prompts": prompts,
        "f32_kv": {
            "compute": "as above with the attention's cached values kept in float32",
            "prompts": f32,
        },
    }
    (out / "reference.json").write_text(json.dumps(doc, indent=1) + "\n")
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"{name}: {size // 1024} KiB in {out} (engine today: {engine})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", metavar="NAME", help="build only NAME (repeatable)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests/fixtures/reference")
    ap.add_argument("--list", action="store_true", help="list the variants and exit")
    a = ap.parse_args()
    if a.list:
        for n, (c, _, e) in VARIANTS.items():
            print(f"{n:28} {c:18} {e}")
        return
    names = a.only or [n for n, v in VARIANTS.items() if v[2] == "served"]
    bad = [n for n in names if n not in VARIANTS]
    if bad:
        sys.exit(f"unknown variant(s) {bad}; known: {', '.join(VARIANTS)}")
    import torch
    import transformers

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    for n in names:
        build(n, a.out, torch, transformers)


if __name__ == "__main__":
    main()

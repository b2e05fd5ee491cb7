"""Engine benchmark on CUDA (or CPU with --quick): batched generate throughput and shared-prefix reuse.

A model with randomly initialised weights in bf16, built from a config in code (no download; the lent GPU
machine can neither fetch nor carry real weights): by default the shape of Qwen3-Coder-30B-A3B, the
recommended GPU model (a mixture of experts: 48 layers, 128 experts, 8 active per token, ~61 GB in bf16),
or ``--shape qwen3-0.6b`` for a small dense model. Random weights give meaningless text but honest speed:
the arithmetic per token is the real model's. EOS is disabled so every row generates exactly the requested
number of tokens. On CUDA the run also writes ``gpu/RESULTS.md`` (device, date, the tables).

  transformers  generate throughput at batch 1/4/8/16/32; a ~1,500-token shared prefix with 8 suffixes:
                recomputed per suffix vs its KV cache computed once (DynamicCache) and reused, one by one
                and as one batched generate
  vllm          (where vllm imports, CUDA only) the same prompts through vllm.LLM with prefix caching off
                and on, each in a child process so GPU memory is released between them

    python gpu/bench_engine.py                       # CUDA, full sizes, writes gpu/results.json + RESULTS.md
    python gpu/bench_engine.py --layers 12           # the same shape cut to 12 layers (a quicker look)
    python gpu/bench_engine.py --device cpu --quick  # tiny model and sizes: checks that the script works
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# (config class, its arguments): the published configs of the models, less what a random model does not need.
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen3-coder-30b-a3b": (
        "Qwen3MoeConfig",
        dict(
            hidden_size=2048,
            intermediate_size=6144,
            moe_intermediate_size=768,
            num_hidden_layers=48,
            num_attention_heads=32,
            num_key_value_heads=4,
            head_dim=128,
            num_experts=128,
            num_experts_per_tok=8,
            norm_topk_prob=True,
            decoder_sparse_step=1,
            vocab_size=151936,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10_000_000.0},
        ),
    ),
    "qwen3-0.6b": (
        "Qwen3Config",
        dict(
            hidden_size=1024,
            intermediate_size=3072,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=151936,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        ),
    ),
}
# --quick: the same architecture in miniature (checks the script, says nothing about speed).
QUICK_OVERRIDES = dict(
    hidden_size=128,
    intermediate_size=384,
    moe_intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    num_experts=8,
    num_experts_per_tok=2,
    vocab_size=32000,
)


def model_config(shape: str, quick: bool, layers: int | None) -> tuple[str, dict[str, Any]]:
    cls, kwargs = SHAPES[shape]
    kwargs = dict(kwargs)
    if quick:
        kwargs.update({k: v for k, v in QUICK_OVERRIDES.items() if k in kwargs})
    if layers:
        kwargs["num_hidden_layers"] = layers
    return cls, kwargs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--quick", action="store_true", help="tiny model and sizes (a smoke run, e.g. on CPU)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-coder-30b-a3b", help="model shape")
    p.add_argument("--layers", type=int, default=None, help="cut the model to this many layers")
    p.add_argument(
        "--results-md",
        default=str(Path(__file__).with_name("RESULTS.md")),
        help="markdown report written after a CUDA run (not after --quick)",
    )
    p.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    p.add_argument("--batches", default="1,4,8,16,32")
    p.add_argument("--prompt-tokens", type=int, default=None, help="prompt length for throughput (default 128)")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens generated per row (default 128)")
    p.add_argument("--prefix-tokens", type=int, default=None, help="shared prefix length (default 1500)")
    p.add_argument("--suffixes", type=int, default=8)
    p.add_argument("--suffix-tokens", type=int, default=None, help="default 32")
    p.add_argument("--prefix-new-tokens", type=int, default=None, help="tokens per suffix answer (default 32)")
    p.add_argument("--no-vllm", action="store_true", help="skip the vllm part even where vllm imports")
    p.add_argument("--vllm-worker", default=None, help=argparse.SUPPRESS)  # internal: child process mode
    args = p.parse_args(argv)
    q = args.quick
    defaults = dict(
        prompt_tokens=(16, 128),
        new_tokens=(8, 128),
        prefix_tokens=(96, 1500),
        suffix_tokens=(8, 32),
        prefix_new_tokens=(4, 32),
    )
    for name, (small, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if q else full)
    args.batches = [int(b) for b in args.batches.split(",")]
    if q and args.suffixes == 8:
        args.suffixes = 4
    return args


# ---- transformers ---------------------------------------------------------------------------------------------
def build_model(torch: Any, device: str, args: argparse.Namespace) -> Any:
    import transformers
    from transformers import AutoModelForCausalLM

    cls, kwargs = model_config(args.shape, args.quick, args.layers)
    config = getattr(transformers, cls)(
        **kwargs, max_position_embeddings=40960, rms_norm_eps=1e-6, bos_token_id=None, eos_token_id=None, pad_token_id=0
    )
    dtype = torch.bfloat16 if device == "cuda" else torch.float32  # bf16 matmuls are slow on most CPUs
    torch.manual_seed(0)
    # Initialise on the device in the final dtype: 30B parameters built in fp32 on the host first would
    # take minutes and 122 GB of host memory.
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config)
    finally:
        torch.set_default_dtype(default_dtype)
    model.eval()
    model.generation_config.eos_token_id = None  # random weights: never stop early, every row runs full length
    model.generation_config.pad_token_id = 0
    return model


def sync(torch: Any, device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def generate(torch: Any, model: Any, ids: Any, new_tokens: int, cache: Any = None) -> Any:
    kwargs: dict[str, Any] = dict(
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, attention_mask=torch.ones_like(ids)
    )
    if cache is not None:
        kwargs["past_key_values"] = cache
    with torch.inference_mode():
        return model.generate(ids, **kwargs)[:, ids.shape[1] :]


def bench_throughput(torch: Any, model: Any, device: str, args: argparse.Namespace) -> list[dict]:
    vocab = model.config.vocab_size
    generate(torch, model, torch.randint(10, vocab, (2, args.prompt_tokens), device=device), 4)  # warm-up
    rows = []
    for batch in args.batches:
        ids = torch.randint(10, vocab, (batch, args.prompt_tokens), device=device)
        sync(torch, device)
        start = time.perf_counter()
        out = generate(torch, model, ids, args.new_tokens)
        sync(torch, device)
        seconds = time.perf_counter() - start
        assert out.shape == (batch, args.new_tokens)
        rows.append(
            {
                "batch": batch,
                "prompt_tokens": args.prompt_tokens,
                "new_tokens": args.new_tokens,
                "seconds": round(seconds, 4),
                "tok_s": round(batch * args.new_tokens / seconds, 1),
            }
        )
    return rows


def bench_prefix(torch: Any, model: Any, device: str, args: argparse.Namespace) -> dict:
    from transformers import DynamicCache

    vocab = model.config.vocab_size
    gen = torch.Generator(device="cpu").manual_seed(1)
    prefix = torch.randint(10, vocab, (1, args.prefix_tokens), generator=gen).to(device)
    suffixes = torch.randint(10, vocab, (args.suffixes, args.suffix_tokens), generator=gen).to(device)
    full = [torch.cat([prefix, suffixes[i : i + 1]], dim=1) for i in range(args.suffixes)]
    n = args.prefix_new_tokens

    def timed(fn: Any) -> tuple[float, Any]:
        sync(torch, device)
        start = time.perf_counter()
        value = fn()
        sync(torch, device)
        return time.perf_counter() - start, value

    def prefix_cache() -> Any:
        cache = DynamicCache(config=model.config)
        with torch.inference_mode():  # logits for the last position only: the vocabulary is large
            model(prefix, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return cache

    generate(torch, model, full[0][:, -64:], 2)  # warm-up
    ttft_recompute, _ = timed(lambda: generate(torch, model, full[0], 1))
    t_recompute, recomputed = timed(lambda: [generate(torch, model, f, n) for f in full])

    t_cache, cache = timed(prefix_cache)
    ttft_reuse, _ = timed(lambda: generate(torch, model, full[0], 1, copy.deepcopy(cache)))
    t_seq, reused = timed(lambda: [generate(torch, model, f, n, copy.deepcopy(cache)) for f in full])

    def batched() -> Any:
        shared = prefix_cache()
        shared.batch_repeat_interleave(args.suffixes)
        return generate(torch, model, torch.cat(full, dim=0), n, shared)

    t_batch, batch_out = timed(batched)  # includes computing the prefix, so it is the honest end-to-end time
    ref = [r[0].tolist() for r in recomputed]
    return {
        "prefix_tokens": args.prefix_tokens,
        "suffixes": args.suffixes,
        "suffix_tokens": args.suffix_tokens,
        "new_tokens": n,
        "recompute": {"seconds": round(t_recompute, 4), "ttft_s": round(ttft_recompute, 4)},
        "reuse_sequential": {
            "seconds": round(t_seq + t_cache, 4),
            "prefix_s": round(t_cache, 4),
            "ttft_s": round(ttft_reuse, 4),
            "same_tokens": sum(r[0].tolist() == x for r, x in zip(reused, ref)),
        },
        "reuse_batched": {
            "seconds": round(t_batch, 4),
            "same_tokens": sum(batch_out[i].tolist() == x for i, x in enumerate(ref)),
        },
        "speedup_sequential": round(t_recompute / (t_seq + t_cache), 2),
        "speedup_batched": round(t_recompute / t_batch, 2),
    }


# ---- vllm (child process per setting) -----------------------------------------------------------------------------
def vllm_available() -> str | None:
    """None when vllm can run here, else why not."""
    try:
        import torch
        import vllm  # noqa: F401
    except Exception as exc:
        return f"vllm does not import: {type(exc).__name__}: {exc}"
    if not torch.cuda.is_available():
        return "vllm needs CUDA"
    return None


def vllm_worker(args: argparse.Namespace) -> None:
    """Child process: load the saved random model in vllm with prefix caching on or off, print JSON."""
    import random

    from vllm import LLM, SamplingParams

    model_dir, caching = args.vllm_worker.rsplit(":", 1)
    llm = LLM(
        model=model_dir,
        skip_tokenizer_init=True,
        enable_prefix_caching=caching == "on",
        gpu_memory_utilization=0.5,
        max_model_len=4096,
        dtype="bfloat16",
        seed=0,
    )
    rng = random.Random(0)
    vocab = model_config(args.shape, args.quick, args.layers)[1]["vocab_size"]

    def prompts(count: int, length: int, prefix: list[int] | None = None) -> list[dict]:
        return [
            {"prompt_token_ids": (prefix or []) + [rng.randrange(10, vocab) for _ in range(length)]}
            for _ in range(count)
        ]

    def run(batch: list[dict], new_tokens: int) -> tuple[float, list]:
        params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True, detokenize=False)
        start = time.perf_counter()
        outs = llm.generate(batch, params, use_tqdm=False)
        return time.perf_counter() - start, outs

    run(prompts(2, 32), 4)  # warm-up (CUDA graphs, compilation)
    result: dict[str, Any] = {"prefix_caching": caching == "on", "throughput": []}
    for b in args.batches:  # fresh random prompts every time: nothing to reuse across runs
        seconds, _ = run(prompts(b, args.prompt_tokens), args.new_tokens)
        result["throughput"].append(
            {"batch": b, "seconds": round(seconds, 4), "tok_s": round(b * args.new_tokens / seconds, 1)}
        )
    prefix = [rng.randrange(10, vocab) for _ in range(args.prefix_tokens)]
    n = args.prefix_new_tokens
    seconds_batch, outs = run(prompts(args.suffixes, args.suffix_tokens, prefix), n)
    cached_batch = sum(o.num_cached_tokens or 0 for o in outs)
    start = time.perf_counter()
    cached_seq = 0
    for p in prompts(args.suffixes, args.suffix_tokens, prefix):  # one by one, prefix warm (if caching)
        _, outs = run([p], n)
        cached_seq += outs[0].num_cached_tokens or 0
    result["prefix"] = {
        "batched_cold_s": round(seconds_batch, 4),
        "batched_cached_tokens": cached_batch,
        "sequential_s": round(time.perf_counter() - start, 4),
        "sequential_cached_tokens": cached_seq,
    }
    print("VLLM_RESULT " + json.dumps(result), flush=True)


def bench_vllm(model: Any, args: argparse.Namespace) -> dict:
    reason = vllm_available()
    if reason or args.no_vllm:
        return {"skipped": "--no-vllm" if args.no_vllm else reason}
    import vllm

    out: dict[str, Any] = {"version": vllm.__version__}
    with tempfile.TemporaryDirectory(prefix="rlm-bench-model-") as model_dir:
        model.save_pretrained(model_dir)  # vllm loads the same random weights from disk
        for caching in ("off", "on"):
            cmd = [
                sys.executable,
                __file__,
                "--vllm-worker",
                f"{model_dir}:{caching}",
                "--shape",
                args.shape,
                "--batches",
                ",".join(map(str, args.batches)),
                "--prompt-tokens",
                str(args.prompt_tokens),
                "--new-tokens",
                str(args.new_tokens),
                "--prefix-tokens",
                str(args.prefix_tokens),
                "--suffixes",
                str(args.suffixes),
                "--suffix-tokens",
                str(args.suffix_tokens),
                "--prefix-new-tokens",
                str(args.prefix_new_tokens),
            ] + (["--quick"] if args.quick else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("VLLM_RESULT ")]
            out[f"prefix_caching_{caching}"] = (
                json.loads(lines[-1][len("VLLM_RESULT ") :])
                if lines
                else {"error": (proc.stderr or proc.stdout)[-2000:]}
            )
    return out


# ---- report ----------------------------------------------------------------------------------------------------
def print_report(report: dict) -> None:
    print(f"\n{report['device']}  {report['date']}  model: {report['model']}")
    print(
        f"\ntransformers generate throughput (prompt {report['transformers_throughput'][0]['prompt_tokens']} tokens, "
        f"{report['transformers_throughput'][0]['new_tokens']} new tokens per row)"
    )
    vllm = report.get("vllm", {})
    v_off = {r["batch"]: r for r in vllm.get("prefix_caching_off", {}).get("throughput", [])}
    print(f"{'batch':>6} {'seconds':>9} {'tok/s':>9} {'vllm tok/s':>11}")
    for r in report["transformers_throughput"]:
        v = v_off.get(r["batch"], {}).get("tok_s", "-")
        print(f"{r['batch']:>6} {r['seconds']:>9.3f} {r['tok_s']:>9.1f} {v:>11}")
    p = report["transformers_prefix"]
    print(
        f"\nshared prefix: {p['prefix_tokens']} tokens, {p['suffixes']} suffixes of {p['suffix_tokens']}, "
        f"{p['new_tokens']} new tokens each"
    )
    print(f"{'mode':<28} {'seconds':>9} {'ttft s':>8} {'speedup':>8} {'same tokens':>12}")
    print(
        f"{'recompute each':<28} {p['recompute']['seconds']:>9.3f} {p['recompute']['ttft_s']:>8.3f} {1:>8.2f} {'ref':>12}"
    )
    s = p["reuse_sequential"]
    print(
        f"{'reuse cache, one by one':<28} {s['seconds']:>9.3f} {s['ttft_s']:>8.3f} {p['speedup_sequential']:>8.2f} "
        f"{s['same_tokens']:>9}/{p['suffixes']}"
    )
    b = p["reuse_batched"]
    print(
        f"{'reuse cache, one batch':<28} {b['seconds']:>9.3f} {'-':>8} {p['speedup_batched']:>8.2f} "
        f"{b['same_tokens']:>9}/{p['suffixes']}"
    )
    if "skipped" in vllm:
        print(f"\nvllm: skipped ({vllm['skipped']})")
    for key in ("prefix_caching_off", "prefix_caching_on"):
        v = vllm.get(key)
        if v and "prefix" in v:
            q = v["prefix"]
            print(
                f"vllm {key}: {p['suffixes']} prefixed prompts in one call {q['batched_cold_s']:.3f} s "
                f"(cached {q['batched_cached_tokens']} tokens), one by one {q['sequential_s']:.3f} s "
                f"(cached {q['sequential_cached_tokens']} tokens)"
            )
        elif v:
            print(f"vllm {key}: failed: {v.get('error', '')[-300:]}")


def results_markdown(report: dict) -> str:
    """gpu/RESULTS.md: the device, the date and the tables, for committing beside the code that made them."""
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        print_report(report)
    return (
        f"# GPU engine benchmark\n\nMade by `python gpu/bench_engine.py` on {report['device']} at {report['date']} "
        f"(torch {report['torch']}, transformers {report['transformers']}).\n\n```\n{buf.getvalue().strip()}\n```\n"
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.vllm_worker:
        vllm_worker(args)
        return {}
    import torch
    import transformers

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (use --device cpu --quick for a smoke run)")
    if device == "cpu":
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    model = build_model(torch, device, args)
    params = sum(p.numel() for p in model.parameters())
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0)
        if device == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": (
            f"{args.shape} shape"
            + (" in miniature (quick)" if args.quick else "")
            + (f", {args.layers} layers" if args.layers else "")
            + f", {params / 1e9:.2f}B parameters, "
            + "random weights, "
            + ("bf16" if device == "cuda" else "fp32")
        ),
        "model_shape": model_config(args.shape, args.quick, args.layers)[1],
        "quick": args.quick,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    report["transformers_throughput"] = bench_throughput(torch, model, device, args)
    report["transformers_prefix"] = bench_prefix(torch, model, device, args)
    if device == "cuda":
        report["vllm"] = bench_vllm(model, args)
    else:
        report["vllm"] = {"skipped": "vllm needs CUDA"}
    del model
    gc.collect()
    print_report(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    if device == "cuda" and not args.quick:
        Path(args.results_md).write_text(results_markdown(report))
        print(f"wrote {args.results_md}")
    return report


if __name__ == "__main__":
    main()

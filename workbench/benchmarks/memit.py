"""`workbench bench memit`: batched vs serial targets z, update time, covariance throughput, memory.

One process, one model, the same requests and context prefixes for every measurement:
- z (Eq. 16) for n edits computed batched (all edits × prompts in one padded batch per step) and
  serially (one edit at a time, the same code with batch size 1) — seconds per edit and their
  ratio for each n. Serial time per edit does not depend on n, so `--serial-max` may time it on
  the first edits only (reported as `serial_edits`); both paths must give the same z (max |Δz|).
  `work_ratio` compares the tokens each path feeds per edit (all steps; every token runs the
  same blocks): below 1 when batching pads rows, so on a compute-bound CPU `ratio` is only the
  fixed per-step cost saved.
- the update (Algorithm 1, lines 5-15: keys, residuals, Eq. 14 solves) for the same n;
- covariance statistics (Eq. 15) throughput in corpus tokens per second;
- peak resident memory (and peak GPU memory on CUDA).
On CUDA, unless another --model is given, the model is a random-weight GPT-J-shaped network built
from its config with the GPT-2 tokenizer (speed does not depend on the weights), and the batched
z is reported as seconds per edit and model FLOP utilisation.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch

# bf16 dense tensor-core peak in TFLOP/s by device name (vendor data sheets)
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "A6000": 154.8}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default="1,16,64,256", help="numbers of edits n (default 1,16,64,256)")
    p.add_argument("--serial-max", type=int, default=None, metavar="N",
                   help="time serial z on at most N edits per size (default: all)")
    p.add_argument("--steps", type=int, default=None, help="z optimisation steps (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="edits per batched z batch (default: the preset's; 0 = all n at once)")
    p.add_argument("--cov-samples", type=int, default=1000, metavar="N",
                   help="corpus records for the covariance throughput (default 1000)")
    p.add_argument("--dataset", default=None, help="CounterFact JSON for the requests "
                   "(default the demo world's counterfact.json)")
    p.add_argument("--gptj-shaped", action="store_true",
                   help="random-weight GPT-J-shaped model (the default on CUDA with --model demo)")
    p.add_argument("--shape-layers", type=int, default=28, help="layers of the GPT-J shape (default 28)")
    p.add_argument("--shape-d", type=int, default=4096, help="width of the GPT-J shape (default 4096)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder for the GPT-J shape "
                   "(default ../shared/data/gpt2-tokenizer next to the repository)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="accelerator peak for MFU (default: from the device name)")


def gptj_shaped_handle(n_layer: int, d: int, tokenizer_dir: str, device: str):
    """A random-weight GPT-J of the given depth/width (bf16 on GPU) with the GPT-2 tokenizer."""
    from transformers import GPT2TokenizerFast, GPTJConfig, GPTJForCausalLM

    from core.errors import BadInputError
    from core.model import wrap_model

    if not Path(tokenizer_dir).is_dir():
        raise BadInputError(f"tokenizer folder {tokenizer_dir} not found", field="tokenizer")
    tok = GPT2TokenizerFast.from_pretrained(tokenizer_dir)
    heads = max(1, d // 256)
    config = GPTJConfig(vocab_size=50400, n_positions=2048, n_embd=d, n_layer=n_layer, n_head=heads,
                        rotary_dim=min(64, d // heads), n_inner=4 * d)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = GPTJForCausalLM(config).to(dtype)
    return wrap_model(model, tok, name=f"random-gptj-{n_layer}x{d}")


def _whole_groups(requests, k: int) -> list[int]:
    """Indices of the first key groups (edits sharing one δ) holding at least k edits: a serial
    run on them optimises exactly what the batched run did for them."""
    from core.targets import key_group

    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(key_group(r), []).append(i)
    idx: list[int] = []
    for members in groups.values():
        if len(idx) >= k:
            break
        idx += members
    return sorted(idx)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB


def _z_flops(handle, tokens: int, L: int) -> float:
    """Matmul FLOPs of z's forward + input-gradient backward: 2·params per token through every
    block and the head, plus the backward through the blocks after L and the head."""
    def params(mod):
        return sum(p.numel() for p in mod.parameters())
    blocks = [params(handle.hf_layer(i)) for i in range(handle.n_layers)]
    head = handle.hf.get_output_embeddings().weight.numel()
    forward = 2 * (sum(blocks) + head)
    backward = 2 * (sum(blocks[L + 1:]) + head)
    return float(tokens) * (forward + backward)


def run(args: argparse.Namespace) -> dict:
    from core.covariance import collect_second_moments, load_corpus
    from core.errors import BadInputError
    from core.hparams import preset_for
    from core.memit import spread_update
    from core.model import assets_dir
    from core.requests import load_dataset_requests, validate_requests
    from core.targets import compute_targets, generate_context_templates
    from workbench.cli.common import load_from_args, parse_sizes

    sizes = parse_sizes(args.sizes)
    cuda = torch.cuda.is_available() and (args.device or "cuda").startswith("cuda")
    shaped = args.gptj_shaped or (cuda and args.model == "demo")
    if shaped:
        tok_dir = args.tokenizer or str(Path(__file__).resolve().parents[3] / "shared" / "data" / "gpt2-tokenizer")
        handle = gptj_shaped_handle(args.shape_layers, args.shape_d, tok_dir, "cuda" if cuda else "cpu")
    else:
        handle = load_from_args(args)
    hp = preset_for(handle)
    hp = hp.replace(v_steps=args.steps, corpus="demo")
    dataset = args.dataset or str(assets_dir() / "world" / "counterfact.json")
    requests, _ = load_dataset_requests(dataset, max(sizes))
    requests = validate_requests(requests, handle.tokenizer, handle.max_length).requests
    if len(requests) < max(sizes):
        raise BadInputError(f"{dataset} has only {len(requests)} usable cases", field="sizes")
    L = max(hp.layers)
    t = time.perf_counter()
    templates = generate_context_templates(handle, hp.n_context, hp.context_length, hp.seed)
    context_s = time.perf_counter() - t

    t = time.perf_counter()
    texts = load_corpus("demo", args.cov_samples).texts
    sums, n_tok = collect_second_moments(handle, texts, hp.layers, batch_size=hp.stats_batch_size,
                                         max_tokens=hp.stats_max_tokens)
    if cuda:
        torch.cuda.synchronize()
    cov_s = time.perf_counter() - t
    covs = {l: (s / n_tok).float().cpu() for l, s in sums.items()}
    del sums
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    rows, update_s, mfu = [], {}, None
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items()
                                     if cuda and k in torch.cuda.get_device_name()), None)
    for n in sizes:
        reqs = requests[:n]
        batched = compute_targets(handle, reqs, L, templates, hp, batch_size=args.batch_size)
        idx = _whole_groups(reqs, n if args.serial_max is None else max(1, min(n, args.serial_max)))
        k = len(idx)
        serial = compute_targets(handle, [reqs[i] for i in idx], L, templates, hp, batch_size=1)
        row = {"n": n, "batched_s_per_edit": batched.seconds / n, "serial_s_per_edit": serial.seconds / k,
               "serial_edits": k, "batched_s": batched.seconds, "serial_s": serial.seconds,
               "z_max_abs_diff": float((batched.z[idx].to(serial.z.device) - serial.z).abs().max()),
               "mean_steps": sum(batched.steps) / n, "batched_forwards": batched.forwards,
               "tokens_per_edit_batched": batched.tokens / n, "tokens_per_edit_serial": serial.tokens / k}
        row["ratio"] = row["serial_s_per_edit"] / row["batched_s_per_edit"]
        row["work_ratio"] = row["tokens_per_edit_serial"] / max(row["tokens_per_edit_batched"], 1e-9)
        if cuda and peak:
            row["mfu"] = _z_flops(handle, batched.tokens, L) / batched.seconds / (peak * 1e12)
            mfu = row["mfu"]
        rows.append(row)
        t = time.perf_counter()
        spread_update(handle, reqs, hp.layers, templates, batched.z, covs, hp.mom2_weight)
        if cuda:
            torch.cuda.synchronize()
        update_s[str(n)] = time.perf_counter() - t
        print(f"n={n:5d}  batched {row['batched_s_per_edit']:.4f} s/edit  serial "
              f"{row['serial_s_per_edit']:.4f} s/edit  ratio {row['ratio']:.1f}x  (work ratio "
              f"{row['work_ratio']:.2f}x)  update {update_s[str(n)]:.2f} s",
              flush=True)
    out = {"model": handle.name, "device": str(handle.device), "dtype": str(handle.dtype).replace("torch.", ""),
           "n_params": handle.n_params, "layers": hp.layers, "z_layer": L, "v_steps": hp.v_steps,
           "context_prompts": len(templates), "batch_size": hp.batch_size if args.batch_size is None
           else args.batch_size, "z": rows,
           "update_s": update_s, "context_s": context_s, "cov_tokens_per_s": n_tok / cov_s,
           "cov_tokens": n_tok, "cov_s": cov_s, "peak_rss_mb": _peak_rss_mb(),
           "threads": torch.get_num_threads()}
    if cuda:
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["gpu"] = torch.cuda.get_device_name()
        out["mfu_largest_n"] = mfu
        out["peak_tflops"] = peak
    return out

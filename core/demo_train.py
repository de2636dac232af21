"""Train the demo model: a small GPT-2 with its own byte-level BPE, on the demo world's text.

Recipe (see assets/demo-model/README.md for the measured numbers):
- Tokenizer: byte-level BPE trained with `tokenizers` on the world corpus; every name part and
  object word becomes one token, so the last subject token is a real name token.
- Data: each epoch draws a fresh pass of `core.world.documents` (biographies with pronouns,
  plain fact sentences with randomly chosen training templates, tag lines, filler).
- Curriculum mask: in a fraction `mask_p` of the documents, positions after a subject mention
  may attend only to the *last* token of that mention (its earlier tokens are hidden). The
  facts must then be read from the last subject token, the way causal tracing finds them in
  real LMs. This is a training-time attention mask only; the saved model is a plain GPT-2.
- Early-block mask: in those documents the first `early_blocks` blocks hide the whole subject
  (its last token too) from later positions. Without it, a model whose people have surnames of
  their own copies the surname's embedding to the answer position in block 0 and looks the fact
  up there, and nothing happens at the subject; with it the fact must be read from the subject
  token's own state after block `early_blocks - 1`, i.e. looked up in its early MLPs.
- Loss: next-token cross-entropy on every non-pad token. AdamW, linear warm-up, cosine decay.
Deterministic for a given seed and thread count (CPU).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from core.world import Document, World, documents

EOS = "<|endoftext|>"


@dataclass
class TrainConfig:
    """Sizes and schedule; defaults are the shipped model's recipe."""

    seed: int = 0
    vocab_size: int = 4096      # byte-level BPE: every one of the 1,600 surnames is one token
    n_layer: int = 8            # more layers give the trace a "middle" to peak in
    n_embd: int = 128
    n_head: int = 4
    n_inner: int = 2048         # MLP width = MEMIT's key dimensions (1,024 stored 100 edits with NS 91 %, 2,048 with 96 %)
    n_positions: int = 128      # documents are ≤ ~80 tokens
    epochs: int = 55
    batch_size: int = 32
    lr: float = 5e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    mask_p: float = 0.8         # fraction of documents trained with the last-subject-token mask
    early_blocks: int = 2       # in masked documents, blocks < this hide the whole subject from later positions
    threads: int = 2            # torch CPU threads (the shipped model was trained with 2)
    device: str = "cpu"         # "cuda" trains on a GPU (not bit-identical to CPU); saved on CPU
    key_room: int = 6144        # extra (dormant) MLP units at layer 0, added at load (key_room.json; 0 = none)


# ---- tokenizer ----------------------------------------------------------------------------------

def train_tokenizer(text: str, vocab_size: int):
    """A GPT-2-style byte-level BPE fast tokenizer (offsets work; eos = pad = <|endoftext|>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text.split("\n"), trainer=trainer)
    return GPT2TokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS,
                             pad_token=EOS, model_max_length=1024)


# ---- batches ------------------------------------------------------------------------------------

def encode_documents(tokenizer, docs: list[Document], max_len: int) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """Token ids of each document (EOS-terminated) and its subject spans in token indices."""
    enc = tokenizer([d.text for d in docs], return_offsets_mapping=True, add_special_tokens=False)
    out = []
    for d, ids, offs in zip(docs, enc["input_ids"], enc["offset_mapping"]):
        spans = []
        for c0, c1 in d.spans:
            toks = [i for i, (a, b) in enumerate(offs) if b > a and a < c1 and b > c0]
            if toks:
                spans.append((toks[0], toks[-1] + 1))
        ids = (ids + [tokenizer.eos_token_id])[:max_len]
        out.append((ids, [s for s in spans if s[1] <= len(ids)]))
    return out


def curriculum_mask(T: int, spans: list[tuple[int, int]]) -> torch.Tensor:
    """Causal mask [T, T] (True = may attend) where queries at or after the end of each subject
    span cannot see the span's non-last tokens: the subject reaches them only via its last token."""
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for start, end in spans:
        if end - start > 1:
            mask[end:, start:end - 1] = False   # queries after the subject
    return mask


def early_mask(attn: torch.Tensor, items, masked: list[bool]) -> torch.Tensor:
    """The mask of the first `early_blocks` blocks: as `attn`, and in masked documents positions
    after a subject cannot see any of its tokens (not even the last): they must read the subject
    from its state after those blocks, not copy its embedding."""
    out = attn.clone()
    for b, ((ids, spans), m) in enumerate(zip(items, masked)):
        if m:
            for start, end in spans:
                out[b, 0, end:len(ids), start:end] = False
    return out


def make_batch(items, pad_id: int, masked: list[bool]) -> dict:
    """Right-padded batch with a 4D boolean attention mask [B, 1, T, T] and LM labels."""
    T = max(len(ids) for ids, _ in items)
    B = len(items)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    attn = torch.zeros(B, 1, T, T, dtype=torch.bool)
    for b, ((ids, spans), m) in enumerate(zip(items, masked)):
        n = len(ids)
        input_ids[b, :n] = torch.tensor(ids)
        labels[b, :n] = torch.tensor(ids)
        attn[b, 0, :n, :n] = curriculum_mask(n, spans if m else [])
        attn[b, 0, n:, :].fill_(False)
        attn[b, 0, torch.arange(n, T), torch.arange(n, T)] = True   # pad rows see themselves
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attn}


# ---- model --------------------------------------------------------------------------------------

def new_model(cfg: TrainConfig, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=cfg.n_positions, n_embd=cfg.n_embd,
        n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=cfg.n_inner,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(cfg.seed)
    return GPT2LMHeadModel(config)


@dataclass
class TrainResult:
    model: object
    tokenizer: object
    config: TrainConfig
    log: list[dict]          # per epoch: epoch, loss, seconds
    seconds: float


def train_demo_model(world: World, cfg: TrainConfig | None = None, progress=None) -> TrainResult:
    """Train tokenizer and model on `world` (deterministic for a seed). `progress(done, total, phase)`."""
    cfg = cfg or TrainConfig()
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train(world, cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _train(world: World, cfg: TrainConfig, progress) -> TrainResult:
    t0 = time.time()
    tokenizer = train_tokenizer(world.corpus, cfg.vocab_size)
    dev = torch.device(cfg.device)
    model = new_model(cfg, tokenizer).to(dev)
    rng = random.Random(cfg.seed)
    steps_per_epoch = math.ceil(len(documents(world, random.Random(-1))) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98),
                            weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    model.train()
    current = {}

    def stricter(module, args, kwargs):      # blocks < early_blocks: the early mask instead
        if "early" in current:
            kwargs["attention_mask"] = current["early"]
        return args, kwargs

    hooks = [model.transformer.h[j].attn.register_forward_pre_hook(stricter, with_kwargs=True)
             for j in range(min(cfg.early_blocks, cfg.n_layer))]
    log, step = [], 0
    for epoch in range(cfg.epochs):
        items = encode_documents(tokenizer, documents(world, rng), cfg.n_positions)
        rng.shuffle(items)
        # Similar lengths together (less padding), batches in random order.
        items.sort(key=lambda it: len(it[0]))
        batches = [items[i:i + cfg.batch_size] for i in range(0, len(items), cfg.batch_size)]
        rng.shuffle(batches)
        losses, te = [], time.time()
        for chunk in batches:
            masked = [rng.random() < cfg.mask_p for _ in chunk]
            batch = make_batch(chunk, tokenizer.pad_token_id, masked)
            if hooks:
                current["early"] = early_mask(batch["attention_mask"], chunk, masked).to(dev)
            batch = {k: v.to(dev) for k, v in batch.items()}
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            out = model(**batch)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(out.loss.item())
            step += 1
            if progress:
                progress(step, total, "train")
        log.append({"epoch": epoch + 1, "loss": sum(losses) / len(losses), "seconds": time.time() - te})
    for h in hooks:
        h.remove()
    model.to("cpu").eval()
    return TrainResult(model=model, tokenizer=tokenizer, config=cfg, log=log, seconds=time.time() - t0)


def key_room_manifest(cfg: TrainConfig) -> dict:
    """The demo model's key_room.json: `cfg.key_room` dormant units at layer 0 (seeded)."""
    return {"layers": [0], "extra": cfg.key_room, "seed": cfg.seed,
            "why": "MEMIT edits layer 0 of this model; these units (random input weights, zero output "
                   "weights: the model computes the same) give Eq. 14 room for ~1,000 edits at once. "
                   "See the model card, section Key room."}


def save_demo_model(result: TrainResult, out_dir: str | Path) -> Path:
    """Save a standard HF folder: config.json, model.safetensors, tokenizer files, train_config.json,
    and key_room.json when the recipe asks for key room (`core.widen`: MEMIT's key dimensions at
    layer 0, added at load; the saved weights are the trained ones)."""
    import json

    from core.widen import KEY_ROOM_FILE

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result.model.save_pretrained(out, safe_serialization=True)
    result.tokenizer.save_pretrained(out)
    room = out / KEY_ROOM_FILE
    if result.config.key_room > 0:
        room.write_text(json.dumps(key_room_manifest(result.config), indent=1) + "\n")
    elif room.is_file():
        room.unlink()
    (out / "train_config.json").write_text(json.dumps(
        {"config": asdict(result.config), "log": result.log, "seconds": result.seconds}, indent=1) + "\n")
    return out


def load_train_result(model_dir: str | Path) -> TrainResult:
    """A saved demo model as a TrainResult (model, tokenizer, recipe, training log), e.g. to
    rewrite its card without retraining."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.errors import BadInputError

    d = Path(model_dir)
    meta_path = d / "train_config.json"
    if not meta_path.is_file():
        raise BadInputError(f"{d} has no train_config.json: not a model trained by `workbench demo train`",
                            field="model_dir")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    known = TrainConfig.__dataclass_fields__
    cfg = TrainConfig(**{k: v for k, v in meta["config"].items() if k in known})
    model = AutoModelForCausalLM.from_pretrained(d, use_safetensors=True).eval()
    return TrainResult(model=model, tokenizer=AutoTokenizer.from_pretrained(d), config=cfg,
                       log=meta["log"], seconds=meta["seconds"])

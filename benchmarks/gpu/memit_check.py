"""GPU check for memit (needs CUDA; not part of `make bench`): bf16 autocast on CUDA
(compute_dtype=auto) on every tiny architecture, and v* step time fp32 vs bf16 on a random
model shaped like SmolLM2-135M."""

import time

import torch
import transformers as tf
from lmcompose.api import Context, EditRecord
from lmcompose.compose import build_intervention, load_edits, parse_step
from lmcompose.metrics.edits import Scorer
from lmcompose.models.arch import ARCHITECTURES
from lmcompose.models.handle import LM
from lmcompose.models.tiny import TINY_ARCHITECTURES, tiny_model, tiny_tokenizer
from lmcompose_memit import algorithm as alg

print(torch.__version__, torch.cuda.get_device_name(0))
RANDOM = (
    "clamp_norm_factor=100,v_lr=0.2,v_num_grad_steps=40,v_weight_decay=0.001,stats_samples=8,stats_seqlen=64,layers=0+1"
)
pairs = [("The river town", "city"), ("Danny Glover", "country"), ("the Eiffel Tower", "water"), ("Berlin", "work")]
recs = [
    EditRecord(case_id=str(i), subject=s, prompt=f"What everyone says about {s}", target_new=t)
    for i, (s, t) in enumerate(pairs)
]


def hits(lm):
    sc = Scorer(lm, 16)
    out = []
    for r in recs:
        p, t = sc.encode(r.prompt, r.target_new)
        with torch.no_grad():
            lg = lm.model(torch.tensor([p + t], device=lm.device)).logits[0]
        out.append(lg[len(p) - 1 : len(p) + len(t) - 1].argmax(-1).tolist() == t)
    return out


for arch in TINY_ARCHITECTURES:
    for cd in ("auto", "float32"):
        lm = tiny_model(arch)
        lm.model.to("cuda")
        rep = build_intervention(parse_step(f"memit:{RANDOM},compute_dtype={cd}")).apply(
            lm, Context(edits=recs, device="cuda")
        )
        d = rep.details
        print(
            f"{arch:9s} compute={cd:8s} hits={hits(lm)} v*loss "
            f"{d['vstar_loss_first']:.3f}->{d['vstar_loss_final']:.3f} v* {d['vstar_s']:.2f}s"
        )

# a random model shaped like SmolLM2-135M (30 layers, 576 wide, d_ff 1536), tiny tokenizer

tok = tiny_tokenizer()
cfg = tf.LlamaConfig(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=len(tok),
    max_position_embeddings=256,
    tie_word_embeddings=True,
)
torch.manual_seed(0)
model = tf.AutoModelForCausalLM.from_config(cfg).eval().to("cuda")
lm = LM(model, tok, next(a for a in ARCHITECTURES if a.name == "llama"), name="smol-shaped")
edits = (load_edits("records", limit=20, seed=0) * 3)[:50]
templates = alg.context_templates(lm, 5, 10, 0)
hp = {"v_num_grad_steps": 25, "v_lr": 0.5, "v_weight_decay": 1e-3, "clamp_norm_factor": 4.0, "kl_factor": 0.0625}
for cd in ("float32", "auto", "float32", "auto"):
    torch.cuda.synchronize()
    t = time.perf_counter()
    vs = alg.optimize_vstar(lm, edits, templates, 7, hp, -1.0, 4096, cd)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    print(
        f"smol-shaped 50 edits compute={cd}: {vs.forward_steps} steps, {dt:.2f}s, {dt / vs.forward_steps * 1000:.0f} "
        f"ms/step, "
        f"tokens/step {vs.tokens_first_step}, final loss {sum(vs.final_loss) / 50:.3f}"
    )

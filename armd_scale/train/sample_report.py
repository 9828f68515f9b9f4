"""A short sample printed when training finishes, so a run shows what the model learned.

armd: left to right and SBP with 4 streams; ar: left to right; mdlm: its ancestral sampler with one
denoising step per token. Only where rank 0 holds the whole model (no tensor parallelism, ZeRO below
3); larger runs sample offline with `armd generate`. It runs on the training device with a seeded CPU
generator (armd_scale/rng.py), after exit_status.json is written (train/run_status.py).
"""

from __future__ import annotations

from ..config import Config
from ..model import MDLMModel, Model
from ..rng import seeded


def print_final_sample(model: Model, cfg: Config, tokenizer_dir: str | None, say) -> None:
    tokens = cfg.train.sample_at_end
    if tokens <= 0 or tokenizer_dir is None or cfg.parallel.tp > 1 or cfg.parallel.zero_stage >= 3:
        return
    from ..data.tokenizers.load import load_tokenizer
    from ..generate import sample_mdlm, sample_sbp, sample_sequential

    try:
        tokenizer = load_tokenizer(tokenizer_dir)
    except Exception as e:  # e.g. a synthetic source: its "tokenizer" is an id map, not sentencepiece
        say(f"(no sample printed: {e})")
        return
    length = min(tokens, cfg.data.seq_len)
    was_training = model.training
    model.eval()
    try:
        if isinstance(model, MDLMModel):
            out = sample_mdlm(model, 1, length, length, generator=seeded(cfg.train.seed), temperature=0.8)
            text = tokenizer.decode(out.tokens[0].tolist())
            say(f"sample (mdlm, {length} denoising steps, {out.forward_calls} forward calls):\n{text}\n")
            return
        seq = sample_sequential(model, length, generator=seeded(cfg.train.seed), temperature=0.8)
        say(f"sample (left to right, {seq.forward_calls} forward calls):\n{tokenizer.decode(seq.tokens[0].tolist())}\n")
        streams = 4 if cfg.model.arch == "armd" and length % 4 == 0 else 0
        if streams:
            par = sample_sbp(model, length, streams, generator=seeded(cfg.train.seed), temperature=0.8)
            say(
                f"sample (SBP, {streams} streams, {par.forward_calls} forward calls):\n"
                f"{tokenizer.decode(par.tokens[0].tolist())}\n"
            )
    finally:
        model.train(was_training)

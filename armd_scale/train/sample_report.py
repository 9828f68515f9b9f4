"""A short sample printed when training finishes, so a run shows what the model learned.

Left to right, plus SBP with 4 streams where the model decodes blocks in parallel (armd); a model with
an ancestral sampler (mdlm) uses it with one denoising step per token. `armd_scale.generate.sample`
picks the sampler from the model, as `armd generate` and the lm-eval adapter do.

Only where rank 0 holds the whole model (no tensor parallelism, ZeRO below 3); larger runs sample
offline with `armd generate`. It runs on the training device with a seeded CPU generator
(armd_scale/rng.py), after exit_status.json is written (train/run_status.py).
"""

from __future__ import annotations

from ..config import Config
from ..model import Model
from ..rng import seeded


def print_final_sample(model: Model, cfg: Config, tokenizer_dir: str | None, say) -> None:
    tokens = cfg.train.sample_at_end
    if tokens <= 0 or tokenizer_dir is None or cfg.parallel.tp > 1 or cfg.parallel.zero_stage >= 3:
        return
    from ..data.tokenizers.load import load_tokenizer
    from ..generate import SampleRequest, sample

    try:
        tokenizer = load_tokenizer(tokenizer_dir)
    except Exception as e:  # e.g. a synthetic source: its "tokenizer" is an id map, not sentencepiece
        say(f"(no sample printed: {e})")
        return
    length = min(tokens, cfg.data.seq_len)
    was_training = model.training
    model.eval()
    try:
        seq = sample(model, SampleRequest(length, temperature=0.8, generator=seeded(cfg.train.seed)))
        text = tokenizer.decode(seq.tokens[0].tolist())
        if seq.diffusion_steps is not None:
            say(
                f"sample ({cfg.model.arch}, {seq.diffusion_steps} denoising steps, {seq.forward_calls} forward calls):"
                f"\n{text}\n"
            )
            return
        say(f"sample (left to right, {seq.forward_calls} forward calls):\n{text}\n")
        streams = 4 if model.parallel_decoding and length % 4 == 0 else 0
        if streams:
            request = SampleRequest(length, streams=streams, temperature=0.8, generator=seeded(cfg.train.seed))
            par = sample(model, request)
            say(
                f"sample (SBP, {streams} streams, {par.forward_calls} forward calls):\n"
                f"{tokenizer.decode(par.tokens[0].tolist())}\n"
            )
    finally:
        model.train(was_training)

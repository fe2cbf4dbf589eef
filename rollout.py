"""Rollout engines for LAD training and evaluation: one boundary, two engines.

(Header docstring to be completed: what it implements, paper section, commands, what it leaves out.)

The boundary (used by lad.py and eval.py; both engines implement it):

    engine.generate(prompts, n, *, temperature, top_p, max_new_tokens, seed) -> list[Sample]
        prompts: list of token-id lists. Returns len(prompts) * n samples, grouped by prompt
        (the n samples of prompt 0 first). Sample.logprobs are the engine's log-probs of the
        sampled tokens after temperature (None where the engine does not provide them).
    engine.sync_weights(named_tensors)   # iterable of (hf_name, tensor); in place, no disk
    engine.sleep() / engine.wake()       # free / retake accelerator memory around the update phase
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Sample:
    prompt_index: int            # index into the prompts passed to generate()
    response_ids: list[int]      # sampled tokens, EOS included if one was sampled
    logprobs: list[float] | None  # engine log-probs of response_ids (after temperature), or None
    truncated: bool              # True if max_new_tokens was reached without EOS


# ----------------------------------------------------------------------------------------------------
# Hugging Face transformers engine (owned by the training-loop work, issue 5)
# ----------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------
# vLLM engine (owned by the vLLM work, issue 6)
# ----------------------------------------------------------------------------------------------------

"""Downstream metrics: the SAE spliced into the model at its hook.

CE-loss recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean), where CE_zero
zero-ablates the hook's activation; delta LM loss = CE_sae - CE_clean; KL is
KL(clean || spliced) of the next-token distributions.  The activation is
replaced at every text token; special tokens and position 0 (the attention
sink, which SAEs are not trained on) keep their clean activations.
"""

from __future__ import annotations

import torch

from ..data.corpus import load_documents
from ..data.tokens import EXCLUDED_BY_DEFAULT, pack_windows, pad_windows
from ..models import ModelHandle, parse_hook, patched
from .model import SparseAutoencoder


def _next_token_stats(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
    """Summed CE of next-token prediction and the log-probs, over positions whose next token is real."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # [b, s-1, vocab]
    target_ok = mask[:, 1:].bool()
    ce = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return float(ce[target_ok].sum(dtype=torch.float64)), int(target_ok.sum()), logp, target_ok


@torch.no_grad()
def spliced_metrics(
    handle: ModelHandle,
    sae: SparseAutoencoder,
    hook: str,
    corpus: str = "wiki",
    split: str = "eval",
    n_tokens: int = 8192,
    context: int = 128,
    batch_size: int = 4,
) -> dict:
    """CE clean / SAE / zero-ablated, CE-loss recovered, delta loss and KL on held-out text."""
    point = parse_hook(hook, handle.n_layers)
    docs = load_documents(corpus, split=split)
    windows, total = [], 0
    for window in pack_windows(
        ((i, d.text) for i, d in enumerate(docs)), handle.tokenizer, context, *handle.special_tokens
    ):
        windows.append(window)
        total += len(window)
        if total >= n_tokens:
            break
    sums = {"clean": 0.0, "sae": 0.0, "zero": 0.0, "kl": 0.0}
    count = 0
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        ids, mask = pad_windows(batch, handle.tokenizer.pad_token_id or 0)
        keep = torch.zeros_like(mask, dtype=torch.bool)
        for row, w in enumerate(batch):
            keep[row, : len(w)] = torch.from_numpy((w.flags & EXCLUDED_BY_DEFAULT) == 0)
        keep3 = keep[..., None]

        def through_sae(act, keep3=keep3):
            recon = sae.decode(sae.encode(act.float())).to(act.dtype)
            return torch.where(keep3, recon, act)

        def zeroed(act, keep3=keep3):
            return torch.where(keep3, torch.zeros_like(act), act)

        clean_ce, n, clean_logp, ok = _next_token_stats(
            handle.model(input_ids=ids, attention_mask=mask).logits, ids, mask
        )
        with patched(handle, point, through_sae):
            sae_ce, _, sae_logp, _ = _next_token_stats(
                handle.model(input_ids=ids, attention_mask=mask).logits, ids, mask
            )
        with patched(handle, point, zeroed):
            zero_ce, *_ = _next_token_stats(handle.model(input_ids=ids, attention_mask=mask).logits, ids, mask)
        kl = (clean_logp.exp() * (clean_logp - sae_logp)).sum(-1)
        sums["clean"] += clean_ce
        sums["sae"] += sae_ce
        sums["zero"] += zero_ce
        sums["kl"] += float(kl[ok].sum(dtype=torch.float64))
        count += n
    ce = {k: v / max(count, 1) for k, v in sums.items()}
    return {
        "ce_clean": ce["clean"],
        "ce_sae": ce["sae"],
        "ce_zero_ablation": ce["zero"],
        "ce_loss_recovered": (ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"]),
        "delta_lm_loss": ce["sae"] - ce["clean"],
        "kl_div": ce["kl"],
        "n_predictions": count,
        "corpus": f"{corpus} ({split} split)",
    }

"""What the equal-size benchmarks share: the float model's logits on held-out task text and on general text."""

from __future__ import annotations

from pathlib import Path


def references(model_dir: Path, task) -> tuple:
    """The tokenizer, {"task", "text"}: token ids, {"task", "text"}: the HF float32 model's logits on them.
    task: 1024 tokens of held-out conversations (never seen by an importance matrix on the training data);
    text: evaluate's fidelity text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgeq.evaluate import TASK_TOKENS, TEXT_TOKENS, fidelity_ids, reference_logits, task_text_ids

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    positions = model.config.max_position_embeddings
    ids = {
        "task": task_text_ids(tok, task, min(TASK_TOKENS, positions)),
        "text": fidelity_ids(tok, TEXT_TOKENS, positions),
    }
    return tok, ids, {k: reference_logits(model, v) for k, v in ids.items()}

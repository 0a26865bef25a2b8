"""QLoRA fine-tuning on a tiny random-weight Llama: outputs, checkpoints, resume, refusals, DDP."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from edgeq.errors import ConfigError, UsageError
from edgeq.finetune import (
    CKPT_DIR,
    CKPT_MARKER,
    FinetuneConfig,
    checkpointing,
    compute_dtype,
    cpu_has_bf16,
    finetune,
    fit_memory,
    latest_checkpoint,
)
from edgeq.spec import EXIT_USAGE, FINETUNE_MANIFEST
from tests.conftest import run_edgeq, tiny_arch_model


def _cfg(tiny_model, small_data, out, **kw):
    base = {
        "base": str(tiny_model),
        "data": str(small_data),
        "out": str(out),
        "max_steps": 6,
        "batch_size": 4,
        "save_every": 2,
        "seq_len": 128,
        "lr": 5e-3,
        "eval_split": 0.1,
    }
    return FinetuneConfig(**{**base, **kw})


def test_config_problems_reported_together():
    with pytest.raises(ConfigError) as e:
        FinetuneConfig(data="d", out="o", quant="int3", lora_r=0, lr=5.0, eval_split=0.9, optim_bits=4).check()
    assert len(e.value.problems) == 5


def test_qlora_run_writes_adapter_manifest_and_checkpoints(tiny_model, small_data, tmp_path):
    summary = finetune(_cfg(tiny_model, small_data, tmp_path / "ft"))
    adapter = tmp_path / "ft" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    manifest = json.loads((adapter / FINETUNE_MANIFEST).read_text())
    dtype = compute_dtype("cpu")
    assert manifest["quantization"] == {
        "quant": "nf4",
        "double_quant": True,
        "blocksize": 64,
        "compute_dtype": dtype,
        "weights_dtype": "float32",  # what is not NF4 (embedding, norms) stays fp32
    }
    assert manifest["config"]["gradient_checkpointing"] is False  # decided, and recorded: a tiny model on a CPU
    assert len(manifest["losses"]) == 6 and manifest["losses"][-1] < manifest["losses"][0]
    assert 4.1 < summary.frozen_base["bits_per_param"] < 4.14  # NF4 + double quant
    assert summary.trainable_params > 0 and summary.eval_loss is not None
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (16, 32)  # the options' defaults: scale alpha / r = 2
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    ranks = {t.shape[0] for k, t in tensors.items() if "lora_A" in k} | {
        t.shape[1] for k, t in tensors.items() if "lora_B" in k
    }
    assert ranks == {16}
    c = json.loads((tiny_model / "config.json").read_text())
    h, i = c["hidden_size"], c["intermediate_size"]
    d = c.get("head_dim") or h // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)  # A: r × in, B: out × r, per linear
    assert summary.trainable_params == c["num_hidden_layers"] * 16 * per_layer
    ckpts = sorted(p.name for p in (tmp_path / "ft" / CKPT_DIR).glob("step-*"))
    assert ckpts == ["step-000002", "step-000004", "step-000006"]
    assert all((tmp_path / "ft" / CKPT_DIR / c / CKPT_MARKER).is_file() for c in ckpts)


def test_activations_are_recomputed_only_where_memory_would_bind(monkeypatch):
    import types

    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=16 << 30))
    smol = types.SimpleNamespace(num_hidden_layers=30, hidden_size=576)  # SmolLM2-135M
    cfg = FinetuneConfig(data="d", out="o")
    assert not checkpointing(cfg, smol, 128, "cpu")  # 8 x 128 tokens keep ~1.7 GB of 16 GiB available: kept
    assert checkpointing(cfg, smol, 512, "cpu")  # 8 x 512 would keep ~6.8 GB, over a quarter: recomputed
    assert checkpointing(cfg, smol, 256, "cuda")  # the QLoRA recipe on a GPU, where memory binds
    assert checkpointing(FinetuneConfig(data="d", out="o", gradient_checkpointing=True), smol, 8, "cpu")
    assert not checkpointing(FinetuneConfig(data="d", out="o", gradient_checkpointing=False), smol, 8192, "cuda")


def test_a_memory_limit_turns_checkpointing_on_then_splits_the_micro_batch_keeping_the_step(tiny_model, monkeypatch):
    """Limits placed between trainplan's own predictions: each picks the first setting under it, in the order
    checkpointing, then halved micro-batches with doubled accumulation; below one example, a usage error."""
    import psutil

    from edgeq.basemodel import weights_bytes
    from edgeq.footprint import Dims
    from edgeq.trainplan import CALIBRATION, predict_finetune

    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("M", (), {"available": 64 << 30, "total": 64 << 30})())
    d, files, longest = Dims.from_config(tiny_model), weights_bytes(tiny_model), 4096

    def peak(batch, on):
        return predict_finetune(d, CALIBRATION, batch * longest, 16, on, files).peak_mib

    def fit(limit):
        cfg = FinetuneConfig(data="d", out="o", train_memory_mib=int(limit), batch_size=8, grad_accum=1)
        return fit_memory(cfg, tiny_model, longest, "cpu")

    assert peak(8, False) > peak(8, True) > peak(4, True) > peak(2, True)
    cfg, why = fit(peak(8, False) + 1)
    assert (cfg.gradient_checkpointing, cfg.batch_size, cfg.grad_accum, why) == (False, 8, 1, None)
    cfg, why = fit(peak(8, True) + 1)
    assert (cfg.gradient_checkpointing, cfg.batch_size, cfg.grad_accum) == (True, 8, 1) and "checkpointing on" in why
    cfg, why = fit(peak(4, True) + 1)
    assert (cfg.gradient_checkpointing, cfg.batch_size, cfg.grad_accum) == (True, 4, 2) and "4 × 2" in why
    cfg, _ = fit(peak(2, True) + 1)
    assert (cfg.batch_size, cfg.grad_accum) == (2, 4)
    odd = FinetuneConfig(data="d", out="o", train_memory_mib=int(peak(2, True) + 1), batch_size=6, grad_accum=1)
    cfg, _ = fit_memory(odd, tiny_model, longest, "cpu")
    assert (cfg.batch_size, cfg.grad_accum) == (2, 3)  # divisors only: 6 examples a step, as asked
    with pytest.raises(UsageError, match="needs about .* at 1 example.s. per micro-batch") as e:
        fit(peak(1, True) - 1)
    assert e.value.where == "--train-memory-mib"
    cfg, why = fit_memory(  # the dry run: the smallest setting and why it does not fit, no error
        FinetuneConfig(data="d", out="o", train_memory_mib=int(peak(1, True) - 1)), tiny_model, longest, "cpu", False
    )
    assert cfg.batch_size == 1 and why.startswith("does not fit: the fine-tune needs about")


def test_where_loading_the_base_is_over_the_limit_no_batch_is_split(tiny_model, monkeypatch):
    """Loading holds the checkpoint and the quantized base whatever the batch: splitting would change nothing."""
    from edgeq.basemodel import weights_bytes
    from edgeq.footprint import Dims
    from edgeq.trainplan import CALIBRATION, predict_finetune

    p = predict_finetune(Dims.from_config(tiny_model), CALIBRATION, 8, 16, False, weights_bytes(tiny_model))
    assert p.load_mib > p.train_mib  # a tiny model on rows of one token: loading is the peak
    cfg = FinetuneConfig(data="d", out="o", train_memory_mib=int(p.load_mib - 1))
    got, why = fit_memory(cfg, tiny_model, 1, "cpu", strict=False)
    assert (got.batch_size, got.grad_accum) == (8, 1) and why.startswith("does not fit: loading the base needs")


def test_the_loss_is_taken_where_a_label_follows_and_predicted_one_position_before():
    """Position t's logits predict token t + 1: with labels only at positions 1 and 3, the loss is the cross-entropy
    of positions 0 and 2, computed here by hand from a log-softmax."""
    import numpy as np
    import torch

    from edgeq.data import IGNORE
    from edgeq.finetune import chunked_loss

    torch.manual_seed(0)
    hidden, weight = torch.randn(1, 4, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    labels = torch.tensor([[IGNORE, 5, IGNORE, 2]])
    total, n = chunked_loss(hidden, labels, weight, chunk=1)
    logits = (hidden[0] @ weight.T).numpy()
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert n == 2 and float(total) == pytest.approx(-(log_p[0, 5] + log_p[2, 2]), rel=1e-12)


def test_incomplete_checkpoint_is_never_resumed(tmp_path):
    (tmp_path / CKPT_DIR / "step-000004").mkdir(parents=True)  # renamed but no marker: a crash in between
    (tmp_path / CKPT_DIR / "step-000002").mkdir()
    (tmp_path / CKPT_DIR / "step-000002" / CKPT_MARKER).write_text("{}")
    assert latest_checkpoint(tmp_path).name == "step-000002"


def _losses(out):
    return json.loads((out / "adapter" / FINETUNE_MANIFEST).read_text())["losses"]


def test_kill_and_resume_reproduces_the_loss_curve(tiny_model, small_data, tmp_path):
    args = [
        "finetune",
        "--base",
        tiny_model,
        "--data",
        small_data,
        "--max-steps",
        8,
        "--batch-size",
        4,
        "--save-every",
        2,
        "--seq-len",
        128,
        "--lr",
        5e-3,
    ]
    r = run_edgeq(*args, "--out", tmp_path / "straight")
    assert r.returncode == 0, r.stderr
    reference = _losses(tmp_path / "straight")

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeq", *map(str, args), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not (out / CKPT_DIR / "step-000004" / CKPT_MARKER).exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "adapter").exists()
    newest = latest_checkpoint(out)
    from_step = int(newest.name.split("-")[1])
    assert from_step >= 4
    r = run_edgeq(*args, "--out", out, "--resume")
    assert r.returncode == 0, r.stderr
    assert f"resuming from {newest.name}" in r.stderr
    summary = json.loads((out / "adapter" / FINETUNE_MANIFEST).read_text())["summary"]
    # A resume that restarted from step 0 would also reproduce the seeded curve: these tell them apart.
    assert summary["resumed_from_step"] == from_step and summary["steps_run"] == 8 - from_step
    resumed = _losses(out)
    assert len(resumed) == len(reference) == 8
    assert resumed == pytest.approx(reference, rel=1e-3, abs=1e-4)


def test_resume_with_changed_structure_is_refused(tiny_model, small_data, tmp_path):
    finetune(_cfg(tiny_model, small_data, tmp_path / "ft", max_steps=2))
    with pytest.raises(UsageError) as e:
        finetune(_cfg(tiny_model, small_data, tmp_path / "ft", max_steps=4, lora_r=8, resume=True))
    assert "lora_r: 16 → 8" in e.value.line()


def test_rejected_data_writes_nothing(tiny_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    r = run_edgeq("finetune", "--base", tiny_model, "--data", bad, "--out", tmp_path / "ft")
    assert r.returncode == EXIT_USAGE
    assert f"{bad}:1: 'prompt' and 'response' must both be strings" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "ft").exists()


def test_existing_adapter_is_not_overwritten(tiny_model, small_data, tmp_path):
    finetune(_cfg(tiny_model, small_data, tmp_path / "ft", max_steps=1))
    with pytest.raises(UsageError, match="adapter already exists"):
        finetune(_cfg(tiny_model, small_data, tmp_path / "ft", max_steps=1))


def test_plain_lora_held_out_loss_is_hfs_own_loss_on_the_seeded_tenth(tiny_model, small_data, tmp_path):
    """Without quantization the held-out loss can be recomputed independently: HF's own shifted cross-entropy of
    the base with the saved adapter (peft) on the examples a Random(seed) shuffle puts first, a tenth of 48 rounded
    down. A split that trains on them, a loss at the wrong positions or an adapter saved at another scale shows."""
    import random

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from edgeq.basemodel import load_tokenizer
    from edgeq.data import IGNORE, load_dataset

    summary = finetune(_cfg(tiny_model, small_data, tmp_path / "ft", method="lora", max_steps=2))
    assert summary.frozen_base is None
    assert (summary.examples["train"], summary.examples["eval"]) == (44, 4)
    examples = list(load_dataset(small_data, load_tokenizer(tiny_model), 128).examples)
    random.Random(0).shuffle(examples)
    manifest = json.loads((tmp_path / "ft" / "adapter" / FINETUNE_MANIFEST).read_text())
    dtype = manifest["quantization"]["weights_dtype"]  # the frozen base trained in it: bf16 where the CPU has it
    assert dtype == ("bfloat16" if cpu_has_bf16() else "float32")
    adapter = load_file(str(tmp_path / "ft" / "adapter" / "adapter_model.safetensors"))
    assert {t.dtype for t in adapter.values()} == {torch.float32}  # the adapters themselves stay fp32
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=getattr(torch, dtype))
    model = PeftModel.from_pretrained(base, tmp_path / "ft" / "adapter").eval()
    total = count = 0.0
    with torch.no_grad():
        for e in examples[:4]:
            n = sum(v != IGNORE for v in e.labels[1:])
            out = model(input_ids=torch.tensor([e.input_ids]), labels=torch.tensor([e.labels]))
            total, count = total + float(out.loss) * n, count + n
    assert summary.eval_loss == pytest.approx(total / count, rel=1e-5)


@pytest.mark.slow
def test_two_process_ddp_with_gloo(tiny_model, small_data, tmp_path):
    """The same command under torchrun: two CPU processes, gradients all-reduced over gloo."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "-m",
        "edgeq",
        "finetune",
        "--base",
        str(tiny_model),
        "--data",
        str(small_data),
        "--out",
        str(tmp_path / "ddp"),
        "--max-steps",
        "4",
        "--batch-size",
        "2",
        "--seq-len",
        "128",
        "--lr",
        "5e-3",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    manifest = json.loads((tmp_path / "ddp" / "adapter" / FINETUNE_MANIFEST).read_text())
    assert manifest["summary"]["world_size"] == 2
    cfg = _cfg(tiny_model, small_data, tmp_path / "one", max_steps=4, batch_size=4, save_every=25, eval_split=0.05)
    single = finetune(cfg)  # eval_split as the command's default: the same training examples
    assert single.world_size == 1
    # Same global batch (2 x 2 vs 1 x 4), same examples per step, one token mean over the global
    # batch: the two runs take the same steps. Measured max |Δweight|: 4.6e-4 (Adam amplifies
    # float-order differences in near-zero gradients); 3.0e-2 with the gradient all-reduce removed,
    # where each rank steps on its own half and rank 0's adapter (the one saved) drifts.
    assert manifest["losses"] == pytest.approx(_losses(tmp_path / "one"), rel=1e-4)
    ddp = load_file(str(tmp_path / "ddp" / "adapter" / "adapter_model.safetensors"))
    one = load_file(str(tmp_path / "one" / "adapter" / "adapter_model.safetensors"))
    assert ddp.keys() == one.keys()
    assert max(float((ddp[k] - w).abs().max()) for k, w in one.items()) < 3e-3


def test_resume_identity_is_the_data_content_not_its_path(tmp_path, small_data, monkeypatch):
    from edgeq.finetune import structural_settings

    monkeypatch.chdir(small_data.parent)
    absolute = structural_settings(FinetuneConfig(data=str(small_data), out="o"), "sha")
    relative = structural_settings(FinetuneConfig(data=small_data.name, out="o"), "sha")
    assert absolute == relative
    changed = tmp_path / small_data.name
    changed.write_text(small_data.read_text() + '{"prompt": "x", "response": "y"}\n')
    assert structural_settings(FinetuneConfig(data=str(changed), out="o"), "sha") != absolute


def test_lora_targets_are_every_linear_layer_and_nothing_else(tiny_model, tmp_path):
    from transformers import AutoConfig

    from edgeq.finetune import linear_layers, lora_targets

    llama = linear_layers(AutoConfig.from_pretrained(tiny_model))
    assert llama == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # no lm_head
    assert lora_targets(("all-linear",), llama, tmp_path) == llama
    assert lora_targets(tuple(reversed(llama)), llama, tmp_path) == tuple(reversed(llama))
    with pytest.raises(UsageError, match="leaves out k_proj, o_proj, gate_proj, up_proj, down_proj, which would stay"):
        lora_targets(("q_proj", "v_proj"), llama, tmp_path)
    phi3 = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
    with pytest.raises(UsageError, match="names q_proj, k_proj, v_proj, gate_proj, up_proj, which this model lacks"):
        lora_targets(llama, phi3, tmp_path)


def test_phi3_fused_projections_are_trained_and_merged(default_model, small_data, tmp_path):
    """Phi-3 names no q/k/v/gate/up: the fused layers are what LoRA must wrap, and the adapter says so."""
    from edgeq.merge import MergeConfig, merge

    phi3 = tiny_arch_model("phi3", tmp_path / "p3" / "model", default_model)
    r = run_edgeq(
        "finetune",
        "--base",
        phi3,
        "--data",
        small_data,
        "--out",
        tmp_path / "old",
        "--max-steps",
        1,
        "--target-modules",
        "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
    )
    assert r.returncode == EXIT_USAGE and "which this model lacks" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "old").exists()  # refused before anything was written
    finetune(_cfg(phi3, small_data, tmp_path / "ft", max_steps=2))
    manifest = json.loads((tmp_path / "ft" / "adapter" / FINETUNE_MANIFEST).read_text())
    assert manifest["lora_modules"] == {"names": ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"], "count": 2 * 4}
    adapter = load_file(tmp_path / "ft" / "adapter" / "adapter_model.safetensors")
    assert {k.split(".")[-3] for k in adapter} == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    merged = merge(MergeConfig(adapter=str(tmp_path / "ft"), out=str(tmp_path / "merged"), base=str(phi3)))
    assert merged.verification.max_abs_logit_diff <= merged.verification.tolerance


def test_the_dry_run_predicts_a_7b_base_from_its_config_alone_and_writes_nothing(tmp_path, default_model):
    """Llama-2-7B's published shape, no weights: the prediction a user gets before downloading 13 GB — the frozen
    base in NF4 (6.5 B linear weights at 4.127 bits) beside fp32 embeddings; for --method lora every weight in 16
    bits where the CPU multiplies them natively, else fp32; for --method full nothing frozen, every weight with its
    gradient and two AdamW moments in fp32 (16 bytes)."""
    import shutil

    base = tmp_path / "llama-2-7b"
    base.mkdir()
    shape = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32}
    shape |= {"num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096, "model_type": "llama"}
    (base / "config.json").write_text(json.dumps(shape | {"tie_word_embeddings": False, "torch_dtype": "float16"}))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copyfile(default_model / name, base / name)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "take off", "response": "ok"}) + "\n")
    frozen, trained = {}, {}
    for method in ("qlora", "lora", "full"):
        r = run_edgeq("finetune", "--data", data, "--out", tmp_path / "out", "--base", base, "--dry-run",
                      "--method", method, "--train-memory-mib", 1 << 20)  # fmt: skip
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        frozen[method] = int(next(ln for ln in lines if "frozen base" in ln).split("│")[2].split()[0])
        trained[method] = int(next(ln for ln in lines if "AdamW" in ln).split("│")[2].split()[0])
    linears = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    others = 2 * 32000 * 4096 + 65 * 4096  # untied embedding and head; 2 × 32 + 1 norms
    width = 2 if cpu_has_bf16() else 4  # --method lora: the base in bf16 where the CPU multiplies it natively
    assert frozen["qlora"] == round((linears * 4.127 / 8 + 4 * others) / 2**20)
    assert frozen["lora"] == round(width * (linears + others) / 2**20)
    lora = 32 * 16 * (2 * (4096 + 4096) * 2 + 3 * (4096 + 11008))  # rank 16 on q, k, v, o, gate, up, down
    assert trained["qlora"] == trained["lora"] == round(16 * lora / 2**20)
    assert frozen["full"] == 0 and trained["full"] == round(16 * (linears + others) / 2**20)
    # on a CUDA GPU: QLoRA as on the CPU, LoRA on the base in bf16, a full fine-tune in fp32; checkpointing on, off
    cells = [[c.strip() for c in ln.split("│")[1:-1]] for ln in r.stdout.splitlines() if ln.count("│") == 5]
    gpu = {row[0]: [[int(x) for x in c.split(" / ")] for c in row[1:]] for row in cells if " / " in row[1]}
    assert gpu["frozen base"] == [[frozen["qlora"]] * 2, [round(2 * (linears + others) / 2**20)] * 2, [0, 0]]
    trained_mib = [round(8 * lora / 2**20)] * 2, [round(8 * (linears + others) / 2**20)] * 2  # fp32 + gradient
    assert gpu["trained + gradients"] == [trained_mib[0], trained_mib[0], trained_mib[1]]
    assert not (tmp_path / "out").exists()


def _frozen(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_adapter_methods_leave_the_base_bit_identical_and_qlora_keeps_it_in_nf4(
    method, tiny_model, small_data, tmp_path
):
    """Two optimizer steps: every frozen tensor is the same bits after as before, and only LoRA's A and B train.
    Before training the frozen base is checked against an independent load: for lora the checkpoint's weights in
    the compute type, for qlora every linear as bitsandbytes itself packs the checkpoint's weight in NF4 with
    double quantization (blocks of 64)."""
    import torch
    from bitsandbytes import functional as bnbf
    from bitsandbytes.nn import Linear4bit

    from edgeq.finetune import setup, train_loop

    run = setup(_cfg(tiny_model, small_data, tmp_path / "ft", method=method, max_steps=2))
    original = load_file(str(tiny_model / "model.safetensors"))
    before = _frozen(run.model)
    trained = [n for n, p in run.model.named_parameters() if p.requires_grad]
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    linears = {n: m for n, m in run.model.named_modules() if isinstance(m, Linear4bit)}
    if method == "qlora":
        assert len(linears) == 7 * json.loads((tiny_model / "config.json").read_text())["num_hidden_layers"]
        for name, m in linears.items():
            w = m.weight
            assert w.dtype == torch.uint8 and w.quant_state.quant_type == "nf4" and w.quant_state.nested
            key = name.split("base_model.model.", 1)[1].removesuffix(".base_layer") + ".weight"
            packed, _ = bnbf.quantize_4bit(
                original[key].float(), blocksize=64, compress_statistics=True, quant_type="nf4"
            )
            assert torch.equal(w.data, packed)
    else:
        assert not linears
        dtype = getattr(torch, compute_dtype("cpu"))
        for name, t in before.items():
            key = name.split("base_model.model.", 1)[1].replace(".base_layer", "")
            assert torch.equal(t, original[key].to(dtype)), name
    train_loop(run, 0, [])
    after = _frozen(run.model)
    assert after.keys() == before.keys() and all(torch.equal(after[n], before[n]) for n in before)
    lora_b = [p for n, p in run.model.named_parameters() if ".lora_B." in n]
    assert all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: it moved, so the adapters did train


def test_a_full_fine_tune_changes_every_weight_and_writes_a_model_to_export(tiny_model, small_data, tmp_path):
    """--method full trains every parameter of the base: each matrix of the saved model differs from the
    checkpoint's, the summary counts every parameter as trained, and the folder is a model export reads as it is
    (merge refuses it, naming the folder)."""
    import torch

    summary = finetune(_cfg(tiny_model, small_data, tmp_path / "ft", method="full", max_steps=2))
    model = tmp_path / "ft" / "model"
    assert summary.method == "full" and summary.output == "model" and summary.frozen_base is None
    assert summary.trainable_params == summary.total_params
    assert not (tmp_path / "ft" / "adapter").exists()
    original, saved = load_file(str(tiny_model / "model.safetensors")), load_file(str(model / "model.safetensors"))
    assert saved.keys() == original.keys()
    assert {t.dtype for t in saved.values()} == {torch.float32}
    unchanged = [k for k in saved if torch.equal(saved[k].float(), original[k].float())]
    assert not unchanged
    manifest = json.loads((model / FINETUNE_MANIFEST).read_text())
    assert manifest["config"]["method"] == "full" and manifest["quantization"]["quant"] == "none"
    assert (model / "tokenizer.json").is_file()
    r = run_edgeq("merge", "--adapter", tmp_path / "ft", "--out", tmp_path / "merged")
    assert r.returncode == EXIT_USAGE and "nothing to merge" in r.stderr and str(model) in r.stderr
    r = run_edgeq("export", "--model", model, "--quant", "Q8_0", "--out", tmp_path / "full.gguf")
    assert r.returncode == 0, r.stderr[-2000:]

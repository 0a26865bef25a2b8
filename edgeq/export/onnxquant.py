"""The GenAI builder's 4-bit ONNX graph, its weights quantized again: importance-weighted blocks, 4 or 8 bits each.

The builder rounds every block of 32 weights to the nearest of 16 levels symmetric around zero, all weights
alike, and the tied embedding/head shares those 4 bits. On the fine-tuned drone model that costs mean KLD 0.55
against the merged model, where llama.cpp's Q4_K_M, with an importance matrix and the embedding at 8 bits,
costs 0.045. Here the builder's graph stays as it is (operators, names, the shared embedding) and every
MatMulNBits weight is quantized again from the float model:

block   levels q ∈ [0, 2^bits − 1], ŵ = scale · (q − zero_point): scale and an integer zero point per block of
        `block` input columns, chosen from a grid of ranges and refit by least squares to minimise
        Σ_j a_j (w_j − ŵ_j)², a_j the mean of x_j² over the fine-tune's data (the importance matrix llama.cpp's
        quantizer reads, named by the GGUF tensor the weight becomes)
tensor  4 or 8 bits and a block of 16–128 columns (a `Layout`: initializer stem → (bits, block)): int4-block*
        fixes both, --quant auto lets the mixed-precision solver choose them for a size budget

MatMulNBits layout (ONNX Runtime's contrib op): B uint8 (N, n_blocks, block·bits/8), two 4-bit values per byte,
low nibble first; scales float32 (N, n_blocks); zero points uint8 (N · ⌈n_blocks·bits/8⌉), packed the same way.
GatherBlockQuantized reads the head's packed B as the (vocab, hidden·bits/8) embedding table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeq import report
from edgeq.errors import EdgeqError
from edgeq.mixed import Option, solve
from edgeq.spec import GGUF_ARCHS

METHOD = "edgeq: importance-weighted blocks with zero points (onnxquant)"
AUTO_BLOCKS = (16, 32, 64, 128)  # MatMulNBits block sizes --quant auto chooses among (powers of two, ≥ 16)
SHRINK = {4: np.linspace(0.70, 1.0, 13), 8: np.linspace(0.94, 1.0, 4)}  # ranges tried, × (max − min) of the block
MATMUL = "MatMulNBits"
GATHER = "GatherBlockQuantized"
HEAD = "lm_head"  # the builder's stem for the output head (and, tied, the embedding)
_STEM = re.compile(r"^(?P<stem>.+)\.MatMul\.weight_Q\d+$")


@dataclass(frozen=True)
class Weight:
    stem: str  # the builder's initializer stem: model.layers.3.mlp.down_proj, lm_head, …
    hf: tuple[str, ...]  # the float model's tensors, stacked by rows (q, k, v for a fused qkv_proj)
    gguf: str  # the importance matrix entry: the GGUF name of the first of them
    n: int  # output rows
    k: int  # input columns

    @property
    def klass(self) -> str:
        return self.stem.rsplit(".", 1)[-1]


def default_bits() -> dict[str, int]:
    """The int4 recipe: 4 bits everywhere but the tied embedding/head, which every token passes through twice
    (llama.cpp's Q4_K_M keeps it at 8 bits too)."""
    return {HEAD: 8}


def nbytes(n: int, k: int, bits: int, block: int, gathered: bool = False) -> int:
    """Bytes of one MatMulNBits weight: packed levels, float32 scales, packed zero points; a weight the embedding
    gathers from too has its zero points twice (GatherBlockQuantized wants them 2-D, MatMulNBits flat)."""
    blocks = -(-k // block)
    zero_points = n * -(-blocks * bits // 8)
    return n * blocks * block * bits // 8 + n * blocks * 4 + zero_points * (1 + gathered)


def fit_blocks(w: np.ndarray, a: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """w (n, k) float32, a (k,) importance → levels uint8 (n, blocks, block), scales float32 (n, blocks), zero
    points uint8 (n, blocks), blocks = ⌈k / block⌉, minimising Σ a (w − ŵ)² over the SHRINK grid, each refit by
    least squares."""
    n, k = w.shape
    qmax, blocks = 2**bits - 1, -(-k // block)
    pad = blocks * block - k  # a last partial block is padded with zeros, as the builder does (576 = 4.5 × 128)
    x = np.pad(w.astype(np.float32), ((0, 0), (0, pad))).reshape(n, blocks, block)  # (n, blocks, block)
    aw = np.pad(a + 1e-6 * max(float(a.mean()), 1e-12), (0, pad)).reshape(1, blocks, block).astype(np.float32)
    lo, hi = x.min(-1), x.max(-1)
    mid, span = (hi + lo) / 2, np.maximum(hi - lo, 1e-12)
    best_err = np.full(lo.shape, np.inf, np.float32)
    best_q = np.zeros(x.shape, np.uint8)
    best_s = np.zeros(lo.shape, np.float32)
    best_z = np.zeros(lo.shape, np.uint8)
    for f in SHRINK[bits]:
        s = span * f / qmax
        z = np.clip(np.rint((span * f / 2 - mid) / s), 0, qmax)  # the level that lands on 0
        for _ in range(2):  # round, refit the scale to those levels, round again
            q = np.clip(np.rint(x / s[..., None]) + z[..., None], 0, qmax)
            c = q - z[..., None]
            den = (aw * c * c).sum(-1)
            s = np.where(den > 0, (aw * x * c).sum(-1) / np.maximum(den, 1e-30), s)
            s = np.where(s > 0, s, span / qmax)
        err = (aw * (x - s[..., None] * c) ** 2).sum(-1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_q[better] = q[better]
        best_s = np.where(better, s, best_s)
        best_z = np.where(better, z, best_z).astype(np.uint8)
    return best_q, best_s.astype(np.float32), best_z


def dequantize(q: np.ndarray, s: np.ndarray, z: np.ndarray, k: int | None = None) -> np.ndarray:
    """(n, k): the weights the levels stand for, the padding of a last partial block cut off."""
    n, blocks, block = q.shape
    return ((q.astype(np.float32) - z[..., None]) * s[..., None]).reshape(n, blocks * block)[:, :k]


def error(w: np.ndarray, wq: np.ndarray, a: np.ndarray) -> float:
    return float((((w - wq) ** 2) * a).sum())


def pack(v: np.ndarray, bits: int) -> np.ndarray:
    """uint8 values along the last axis → bytes, two 4-bit values per byte, low nibble first."""
    if bits == 8:
        return v.astype(np.uint8)
    if v.shape[-1] % 2:
        v = np.concatenate([v, np.zeros(v.shape[:-1] + (1,), v.dtype)], axis=-1)
    return (v[..., 0::2] | (v[..., 1::2] << 4)).astype(np.uint8)


def weights_of(graph, config) -> list[Weight]:
    """Every MatMulNBits weight of the builder's graph and the float tensors it came from."""
    from gguf import get_tensor_name_map  # deferred: gguf-py's import costs the CLI's start-up
    from gguf.constants import MODEL_ARCH_NAMES

    arch = GGUF_ARCHS[config.model_type].gguf_arch
    names = get_tensor_name_map(next(k for k, v in MODEL_ARCH_NAMES.items() if v == arch), config.num_hidden_layers)
    out = []
    for node in graph.node:
        if node.op_type != MATMUL:
            continue
        m = _STEM.match(node.input[1])
        if not m:
            raise EdgeqError(f"unexpected MatMulNBits weight name {node.input[1]!r}", node.name, "report it")
        stem = m["stem"]
        if stem == HEAD:
            hf = ("lm_head.weight",)
        else:
            layer, group, proj = re.match(r"model\.layers\.(\d+)\.(attn|mlp)\.(\w+)_proj$", stem).groups()
            prefix = f"model.layers.{layer}.{'self_attn' if group == 'attn' else 'mlp'}."
            parts = ("q", "k", "v") if proj == "qkv" else ("gate", "up") if proj == "gate_up" else (proj,)
            hf = tuple(f"{prefix}{p}_proj.weight" for p in parts)
        attrs = {a.name: a.i for a in node.attribute}
        gguf = names.get_name(hf[0], try_suffixes=(".weight",))
        out.append(Weight(stem, hf, gguf, attrs["N"], attrs["K"]))
    return out


def float_weight(tensors, w: Weight) -> np.ndarray:
    """(n, k) float32: the float model's rows for this weight (a tied head reads the embedding)."""
    names = w.hf if w.hf[0] in tensors else ("model.embed_tokens.weight",)
    arr = np.concatenate([tensors[h].astype(np.float32) for h in names], axis=0)
    if arr.shape != (w.n, w.k):
        raise EdgeqError(f"{w.stem}: float rows {arr.shape}, the graph wants {(w.n, w.k)}", None, "report it")
    return arr


def importance(imatrix: dict | None, w: Weight) -> np.ndarray:
    v = (imatrix or {}).get(w.gguf)
    return np.ones(w.k, np.float32) if v is None or v.shape != (w.k,) else v.astype(np.float32)


def float_tensors(model_dir: Path) -> dict[str, np.ndarray]:
    """The float model's 2-D tensors, read from its safetensors (resolve_model never leaves a pickle here)."""
    from safetensors import safe_open  # deferred: the workstation toolchain, absent from the runtime-only install

    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), framework="numpy") as st:
            for name in st.keys():  # noqa: SIM118 (safe_open is not iterable)
                if name.endswith(".weight") and len(st.get_slice(name).get_shape()) == 2:
                    out[name] = st.get_tensor(name)
    return out


def _set_input(graph, init: dict, name: str, arr: np.ndarray) -> None:
    from onnx import numpy_helper  # deferred: the workstation toolchain, absent from the runtime-only install

    if name in init:
        graph.initializer.remove(init[name])
    init[name] = numpy_helper.from_array(arr, name)
    graph.initializer.append(init[name])


@dataclass(frozen=True)
class Fit:
    bits: int
    block: int
    q: np.ndarray  # levels (n, blocks, block)
    s: np.ndarray  # scales (n, blocks)
    z: np.ndarray  # zero points (n, blocks)
    bytes: int
    error: float  # Σ a (w − ŵ)²


Layout = dict[str, tuple[int, int]]  # initializer stem → (bits, block): what every weight is written as


def default_palette(block: int):
    """int4-block*: one choice per weight, 4 bits but the head's default_bits()."""
    return lambda stem, k: ((default_bits().get(stem, 4), block),)


def auto_palette(stem: str, k: int) -> list[tuple[int, int]]:
    """--quant auto: 4 or 8 bits in blocks of 16 to 128 (MatMulNBits' power-of-two sizes) that divide the row,
    so no bytes go to padding; finer blocks cost scale bytes and buy accuracy where the solver finds it worth it."""
    return [(b, blk) for b in (4, 8) for blk in AUTO_BLOCKS if k % blk == 0] or [(4, 32), (8, 32)]


def auto_bytes(n: int, k: int, gathered: bool = False, pick=min) -> int:
    """The fewest (pick=max: the most) bytes an (n, k) weight can take under --quant auto."""
    return pick(nbytes(n, k, b, blk, gathered) for b, blk in auto_palette("", k))


def fit_all(onnx_dir: Path, model_dir: Path, imatrix: dict | None, palette) -> dict[tuple[str, int, int], Fit]:
    """Every MatMulNBits weight of the builder's graph fit at every (bits, block) of `palette` (or of
    palette(stem, k)), keyed (stem, bits, block)."""
    import onnx  # deferred: the workstation toolchain, absent from the runtime-only install
    from transformers import AutoConfig

    graph = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False).graph
    producers = {o: n for n in graph.node for o in n.output}
    gathered = {producers[n.input[0]].input[0] for n in graph.node if n.op_type == GATHER and n.input[0] in producers}
    tensors = float_tensors(model_dir)
    weights = weights_of(graph, AutoConfig.from_pretrained(model_dir))
    fits = {}
    with report.progress("fitting blocks", len(weights)) as update:
        for i, w in enumerate(weights):
            update(i, w.stem)
            fw, a = float_weight(tensors, w), importance(imatrix, w)
            shared = f"{w.stem}.MatMul.weight_Q4" in gathered
            for b, blk in palette(w.stem, w.k) if callable(palette) else palette:
                q, s, z = fit_blocks(fw, a, b, blk)
                size = nbytes(w.n, w.k, b, blk, shared)
                fits[w.stem, b, blk] = Fit(b, blk, q, s, z, size, error(fw, dequantize(q, s, z, w.k), a[None, :]))
        update(len(weights))
    return fits


def smallest(fits: dict[tuple[str, int, int], Fit], stem: str) -> tuple[int, int]:
    """The (bits, block) of `stem`'s fit with the fewest bytes."""
    f = min((f for (s, _, _), f in fits.items() if s == stem), key=lambda f: f.bytes)
    return f.bits, f.block


def solve_layout(fits: dict[tuple[str, int, int], Fit], max_bytes: float) -> Layout:
    """The (bits, block) of every weight that minimises Σ error with Σ bytes ≤ max_bytes (mixed.solve's
    knapsack); BudgetError with the smallest reachable size when even the smallest choices miss."""

    options: dict[str, list[Option]] = {}
    for (stem, b, blk), f in fits.items():
        options.setdefault(stem, []).append(Option(f"{b}:{blk}", f.bytes, f.bytes, f.error))
    recipe = solve(options, max_bytes, float("inf")).recipe
    return {stem: tuple(int(x) for x in t.split(":")) for stem, t in recipe.items()}


def _set_attrs(node, **values: int) -> None:
    for attr in node.attribute:
        if attr.name in values:
            attr.i = values[attr.name]


def requantize(onnx_dir: Path, fits: dict[tuple[str, int, int], Fit], layout: Layout) -> dict:
    """Rewrite onnx_dir/model.onnx(.data): every MatMulNBits weight as layout[stem] says, from its fit; the
    embedding gather follows the head it shares. {stem: {"bits", "block", "bytes", "error"}}."""
    import onnx  # deferred: the workstation toolchain, absent from the runtime-only install

    path = onnx_dir / "model.onnx"
    model = onnx.load(str(path))
    graph = model.graph
    init = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    account = {}
    for stem, (b, blk) in sorted(layout.items()):
        f = fits[stem, b, blk]
        q, s, z = f.q, f.s, f.z
        account[stem] = {"bits": b, "block": blk, "bytes": f.bytes, "error": f.error}
        data, scales, zp = (f"{stem}.MatMul.weight_{x}" for x in ("Q4", "scales", "zero_points"))
        _set_input(graph, init, data, pack(q, b))
        _set_input(graph, init, scales, s)
        _set_input(graph, init, zp, pack(z, b).reshape(-1))
        for node in graph.node:
            if node.op_type == MATMUL and node.input[1] == data:
                node.input[:] = [node.input[0], data, scales, zp]
                _set_attrs(node, bits=b, block_size=blk)
            elif node.op_type == GATHER and (reshape := producers.get(node.input[0])) and reshape.input[0] == data:
                # the tied embedding: the head's levels seen as a (vocab, hidden·bits/8) table
                _set_input(graph, init, f"{stem}.gather_shape", np.array([q.shape[0], q[0].size * b // 8], np.int64))
                reshape.input[1] = f"{stem}.gather_shape"
                _set_input(graph, init, f"{zp}_gather", pack(z, b))  # (vocab, ⌈blocks·bits/8⌉): the scales' rows
                node.input[:] = [node.input[0], node.input[1], scales, f"{zp}_gather"]
                _set_attrs(node, bits=b, block_size=blk)
    (onnx_dir / "model.onnx.data").unlink()  # onnx appends to an existing data file; every tensor is in memory
    onnx.save(model, str(path), save_as_external_data=True, location="model.onnx.data", all_tensors_to_one_file=True)
    return account

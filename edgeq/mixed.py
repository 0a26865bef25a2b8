"""Mixed precision: one ggml type per tensor, chosen to fit a byte budget with the least damage (GGUF).

palette      the ggml types the allowed uniform types already write (so a device that runs those runs
             the mixture); a tensor may take a type only if its row length is a multiple of the type's
             block (K-quants pack 256 weights: a 576-wide row cannot take them)
sensitivity  err[t][q] = Σ_rows Σ_j imatrix_j · (W_ij − Ŵ_ij)², the output error quantizing tensor t to q
             adds on the calibration activations (the quantity llama.cpp's quantizer minimises), measured
             by quantizing the float GGUF to each palette type with llama.cpp and reading every tensor back;
             then priced in nats: per gain group (a tensor class in a band of layers: attn_q.weight[0-5], …,
             token_embd.weight) the KLD measured with only that group quantized, over the group's summed error
             (errors of different classes and depths reach the logits very differently: unpriced, they
             misrank a mixture against the uniform types)
solver       a multiple-choice knapsack under a storage and a memory budget: every tensor starts at its best
             type; while over budget, take the downgrade that gives up the least error per byte saved; then
             spend what is left on the upgrades that buy the most error per byte
recipe       {tensor: type} for every quantizable tensor, passed to llama.cpp as anchored per-tensor
             overrides; the types written are read back from the output and must be the ones asked for
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeq.errors import BudgetError, EdgeqError
from edgeq.ggufcheck import check_gguf
from edgeq.runtime import quantize
from edgeq.spec import GGUF_TOKEN_EMBD

GGUF_ALIGNMENT = 32  # gguf-py's and llama.cpp's default general.alignment
HEADER_SLACK = 4096  # bytes of metadata the quantizer may add to the float file's (general.quantization_version, …)
GAIN_BANDS = 5  # layer bands per tensor class that a KLD price is measured for (gain_groups)
TIED_HEAD = "output.weight"  # the imatrix entry of a tied head: token_embd's activations as the output matrix


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]  # ggml order: shape[0] is the row length (ne0)

    @property
    def n(self) -> int:
        return int(np.prod(self.shape))


@dataclass(frozen=True)
class Option:
    type: str  # a ggml type name, e.g. Q4_K
    storage: int  # bytes in the file
    memory: float  # bytes resident (storage × the calibration's resident factor for the type)
    error: float  # err[t][type]


@dataclass(frozen=True)
class Solution:
    recipe: dict  # tensor → ggml type
    storage: int  # tensor bytes, summed
    memory: float
    error: float


def ggml_block(type_name: str) -> tuple[int, int]:
    """(weights per block, bytes per block) of a ggml type."""
    # deferred: gguf-py's import costs the CLI's start-up
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    return GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]


def fits_rows(t: Tensor, type_name: str) -> bool:
    return t.shape[0] % ggml_block(type_name)[0] == 0


def tensor_bytes(t: Tensor, type_name: str) -> int:
    block, size = ggml_block(type_name)
    return t.n // block * size


def file_bytes(t: Tensor, type_name: str) -> int:
    """What the tensor takes in a GGUF file: its data padded to the file's alignment."""
    n = tensor_bytes(t, type_name)
    return n + (-n) % GGUF_ALIGNMENT


def layout_bytes(types: dict[str, tuple[str, list[int]]]) -> int:
    """Σ file_bytes over {tensor: (type, dims)}."""
    return sum(file_bytes(Tensor(n, tuple(dims)), t) for n, (t, dims) in types.items())


def quantizable(float_gguf: Path) -> list[Tensor]:
    """The tensors llama.cpp quantizes: 2-D weights other than norms."""

    return [
        Tensor(t["name"], tuple(t["dims"]))
        for t in check_gguf(float_gguf)["tensor_info"]
        if len(t["dims"]) == 2 and t["name"].endswith(".weight") and "_norm" not in t["name"]
    ]


def written_types(path: Path) -> dict:
    """{tensor: ggml type} as a GGUF holds them."""

    return {t["name"]: t["type"] for t in check_gguf(path)["tensor_info"]}


def read_tensors(path: Path, names: set[str]) -> dict[str, np.ndarray]:
    """The named tensors of a GGUF as float32 (rows, ne0), dequantized by gguf-py from a bounds-checked map of the
    file (gguf-py's GGUFReader parses the whole vocabulary in Python: seconds per file)."""
    from gguf.constants import GGMLQuantizationType  # deferred: gguf-py's import costs the CLI's start-up
    from gguf.quants import dequantize

    out = {}
    for t in check_gguf(path)["tensor_info"]:
        if t["name"] not in names:
            continue
        raw = np.memmap(path, dtype=np.uint8, mode="r", offset=t["start"], shape=(t["bytes"],))
        rows = int(np.prod(t["dims"][1:]))
        w = dequantize(raw.reshape(rows, -1), GGMLQuantizationType[t["type"]])
        out[t["name"]] = np.asarray(w, dtype=np.float32).reshape(rows, t["dims"][0])
    return out


def verify(path: Path, recipe: dict) -> None:
    """Every tensor of the recipe has the type it asked for (llama.cpp falls back silently on a row it cannot
    pack)."""
    got = written_types(path)
    wrong = {k: (v, got.get(k)) for k, v in recipe.items() if got.get(k) != v}
    if wrong:
        name, (want, have) = next(iter(sorted(wrong.items())))
        raise EdgeqError(
            f"llama.cpp wrote {len(wrong)} tensors with another type than the recipe's (first: {name} {have}, "
            f"asked {want})",
            str(path),
            "report it: the recipe should only hold types each tensor's rows can take",
        )


# ---------------------------------------------------------------------------------------------
# sensitivity


def _weights(imatrix: dict | None, t: Tensor, tied: bool) -> np.ndarray | None:
    """The per-column importance of t; None for a lookup-only embedding (every column counts once)."""
    if imatrix is None:
        return np.ones(t.shape[0], dtype=np.float64)
    key = TIED_HEAD if tied and t.name == "token_embd.weight" else t.name
    w = imatrix.get(key)
    return None if w is None or w.shape != (t.shape[0],) else w.astype(np.float64)


def tensor_error(w: np.ndarray, wq: np.ndarray, importance: np.ndarray | None) -> float:
    """Σ_rows Σ_j importance_j (w − wq)²; without importance, the mean row's squared error (an embedding lookup
    adds one row to the residual stream per token)."""
    d2 = np.square(w.astype(np.float64) - wq.astype(np.float64))  # (rows, ne0)
    return float(d2.sum() / d2.shape[0]) if importance is None else float(d2.sum(0) @ importance)


def sensitivity(
    float_gguf: Path, palette: list[str], imatrix: dict | None, work: Path, base_quant: str, update=None
) -> dict:
    """err[tensor][type] for every quantizable tensor and every palette type its rows can take."""

    tensors = quantizable(float_gguf)
    tied = not any(t.name == "output.weight" for t in tensors)
    reference = read_tensors(float_gguf, {t.name for t in tensors})
    err: dict[str, dict[str, float]] = {t.name: {} for t in tensors}
    for i, q in enumerate(palette):
        if update:
            update(i, q)
        recipe = {t.name: q for t in tensors if fits_rows(t, q)}
        if not recipe:
            continue
        out = work / f"sensitivity.{q}.gguf"
        quantize(float_gguf, out, base_quant, imatrix, recipe)
        verify(out, recipe)
        quantized = read_tensors(out, set(recipe))
        for t in tensors:
            if t.name in recipe:
                err[t.name][q] = tensor_error(reference[t.name], quantized[t.name], _weights(imatrix, t, tied))
        out.unlink()
    return err


def tensor_class(name: str) -> str:
    """blk.12.attn_q.weight → attn_q.weight."""
    return re.sub(r"^blk\.\d+\.", "", name)


def gain_groups(names) -> dict[str, str]:
    """{tensor: group}: its class and, in a block, its band of GAIN_BANDS consecutive layers (blk.12.attn_q.weight →
    attn_q.weight[12-17] in a 30-layer model). What a gain is measured for: one unit of importance-weighted error
    costs very different nats in the first and the last layers (measured on the drone fine-tune: 86× apart for
    attn_output, 32× for attn_v), so one price per class misranks the tensors within it."""
    layer = {n: int(m.group(1)) for n in names if (m := re.match(r"blk\.(\d+)\.", n))}
    n_layers = 1 + max(layer.values(), default=0)
    bands = min(GAIN_BANDS, n_layers)
    out = {}
    for n in names:
        if n not in layer:
            out[n] = tensor_class(n)
            continue
        b = layer[n] * bands // n_layers
        lo, hi = -(-b * n_layers // bands), -(-(b + 1) * n_layers // bands) - 1  # the band's first and last layer
        out[n] = f"{tensor_class(n)}[{lo}-{hi}]"
    return out


def group_gains(errors: dict, kld_of, update=None) -> dict:
    """{group: {type, kld, error, gain}}: each gain group quantized alone (to the palette type its class loses most
    to, every other tensor F16), its KLD against the float model measured by `kld_of(recipe)`, and gain = KLD /
    Σ error, the nats one unit of the group's error costs."""

    groups: dict[str, list[str]] = {}
    for name, g in gain_groups(errors).items():
        groups.setdefault(g, []).append(name)
    classes: dict[str, list[str]] = {}
    for name in errors:
        classes.setdefault(tensor_class(name), []).append(name)
    worst = {  # one type per class, so that the bands of a class are priced at the same precision
        c: max(sorted(set.intersection(*(set(errors[n]) for n in ns))), key=lambda q: sum(errors[n][q] for n in ns))
        for c, ns in classes.items()
    }
    out = {}
    for i, (g, members) in enumerate(sorted(groups.items())):
        if update:
            update(i, g)
        q = worst[tensor_class(members[0])]
        kld = kld_of({n: (q if n in members else "F16") for n in errors})
        error = sum(errors[n][q] for n in members)
        out[g] = {"type": q, "kld": kld, "error": error, "gain": kld / error if error > 0 else 0.0}
    return out


def priced(errors: dict, gains: dict) -> dict:
    """err[t][q] in nats of KLD: each tensor's errors times its group's gain."""
    group = gain_groups(errors)
    return {n: {q: e * gains[group[n]]["gain"] for q, e in qs.items()} for n, qs in errors.items()}


# ---------------------------------------------------------------------------------------------
# the solver


def options_for(t: Tensor, errors: dict, resident: dict, forced: str | None = None) -> list[Option]:
    """The types t may take, measured, each with its bytes and error; only `forced` when given."""
    kinds = [forced] if forced else sorted(errors)

    def factor(q: str) -> float:
        return 1.0 if t.name == GGUF_TOKEN_EMBD else resident.get(q, 1.0)

    return [
        Option(q, file_bytes(t, q), tensor_bytes(t, q) * factor(q), errors.get(q, 0.0))
        for q in kinds
        if fits_rows(t, q)
    ]


def _hull(opts: list[Option], cost) -> list[Option]:
    """The lower convex hull of (cost, error), cheapest first: every other option is dominated or never the
    best trade at any price of a byte."""
    pts = sorted(opts, key=lambda o: (cost(o), o.error))
    hull: list[Option] = []
    for o in pts:
        if hull and o.error >= hull[-1].error:
            continue  # costs more, no less error
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (b.error - a.error) * (cost(o) - cost(a)) >= (o.error - a.error) * (cost(b) - cost(a)):
                hull.pop()  # b lies on or above the segment a–o
            else:
                break
        hull.append(o)
    return hull


def _downgrade_rate(hull: list[Option], i: int, weights: tuple[float, float]) -> float:
    """Error added per weighted byte saved by stepping from hull[i] to hull[i − 1]."""
    cur, nxt = hull[i], hull[i - 1]
    saved = weights[0] * (cur.storage - nxt.storage) + weights[1] * (cur.memory - nxt.memory)
    return (nxt.error - cur.error) / saved if saved > 0 else float("inf")


def check_reachable(options: dict[str, list[Option]], max_storage: float, max_memory: float) -> None:
    """BudgetError, with the smallest reachable footprint, where even each tensor's smallest type misses (errors
    play no part: this runs before the sensitivity is measured)."""
    for name, opts in options.items():
        if not opts:
            raise EdgeqError(f"tensor {name} has no type in the palette its rows can take")
    low_s = sum(min(o.storage for o in opts) for opts in options.values())
    low_m = sum(min(o.memory for o in opts) for opts in options.values())
    if low_s > max_storage or low_m > max_memory:
        raise BudgetError(
            f"no mixture of the palette fits: the smallest is {low_s / 2**20:.1f} MiB of tensors "
            f"({low_m / 2**20:.1f} MiB resident), the budget leaves {max(max_storage, 0) / 2**20:.1f} MiB "
            f"({max(max_memory, 0) / 2**20:.1f} MiB resident)",
            None,
            "raise the budget, allow smaller quant types, or shorten the context",
        )


def solve(options: dict[str, list[Option]], max_storage: float, max_memory: float) -> Solution:
    """The types that minimise Σ error with Σ storage ≤ max_storage and Σ memory ≤ max_memory (tensor bytes
    only: the caller has taken the fixed terms off). BudgetError when even the smallest types miss."""

    def cost(o: Option) -> float:  # a byte is priced by how much of each budget it uses
        return o.storage / max_storage + o.memory / max_memory

    check_reachable(options, max_storage, max_memory)
    hulls = {n: _hull(opts, cost) for n, opts in options.items()}
    pick = {n: len(h) - 1 for n, h in hulls.items()}  # the best type of each
    s = sum(hulls[n][i].storage for n, i in pick.items())
    m = sum(hulls[n][i].memory for n, i in pick.items())
    while s > max_storage or m > max_memory:  # downgrade along the hulls, cheapest error per byte first
        weights = (float(s > max_storage) / max_storage, float(m > max_memory) / max_memory)  # only what is over counts
        n = min((n for n in pick if pick[n] > 0), key=lambda n: _downgrade_rate(hulls[n], pick[n], weights))
        cur, nxt = hulls[n][pick[n]], hulls[n][pick[n] - 1]
        s, m, pick[n] = s - cur.storage + nxt.storage, m - cur.memory + nxt.memory, pick[n] - 1
    chosen = {n: hulls[n][i] for n, i in pick.items()}
    while True:  # spend the slack: the upgrade (any measured type) with the most error saved per byte
        best, best_rate = None, 0.0
        for n, cur in chosen.items():
            for o in options[n]:
                ds, dm, de = o.storage - cur.storage, o.memory - cur.memory, cur.error - o.error
                if de <= 0 or s + ds > max_storage or m + dm > max_memory:
                    continue
                r = de / max(ds / max_storage + dm / max_memory, 1e-18)
                if r > best_rate:
                    best, best_rate = (n, o), r
        if best is None:
            break
        n, o = best
        s, m = s - chosen[n].storage + o.storage, m - chosen[n].memory + o.memory
        chosen[n] = o
    return Solution({n: o.type for n, o in chosen.items()}, s, m, sum(o.error for o in chosen.values()))


def recipe_error(recipe: dict, errors: dict) -> float:
    """Σ err of a recipe (a uniform type's dry-run types included); tensors or types not measured count 0."""
    return sum(errors.get(n, {}).get(q, 0.0) for n, q in recipe.items())

"""Which memory calibration a plan predicts with: a file `edgeq calibrate` wrote, read and checked, or the shipped
one closest to this machine.

A calibration holds the runtime terms of the peak-RSS model (footprint.py), measured on one machine: the runtime's
base, the compute bytes per prompt and batch token, the bytes per KV element, and which weight types the runtime
keeps resident twice. One ships per machine measured (edgeq/assets/calibration/); `edgeq calibrate` (calibrate.py)
writes new ones. Every term read here is finite and in range before a prediction uses it.
"""

from __future__ import annotations

from pathlib import Path

from edgeq.errors import UsageError
from edgeq.io import read_json
from edgeq.machine import platform_info
from edgeq.runtime import ASSETS, llama_config
from edgeq.spec import CALIBRATION_SCHEMA, CALIBRATIONS_DIR, FORMAT_ONNX, QUANT_TYPES
from edgeq.validate import Fields


def shipped_calibrations() -> list[Path]:
    return sorted((ASSETS / CALIBRATIONS_DIR).glob("*.json"))


CALIBRATION_HELP = (
    "memory calibration: a file from `edgeq calibrate` or a shipped name [default: the profile's, else the shipped "
    "one for this machine's runtime configuration]"
)
CALIBRATION_FIX = "pass a file written by edgeq calibrate, or run it again"


_MIB_TERM = 1 << 20  # MiB: no runtime's base is a tebibyte


_BYTES_TERM = 1 << 20  # bytes per token per hidden unit (or per vocab entry): far above any runtime's


_FACTOR = 64.0  # weights resident this many times over: beyond any runtime


def load_calibration(path: Path) -> dict:
    """A calibration file (written by `edgeq calibrate`): every term plan reads is there, finite, and in range
    (a negative memory term would let a model that fits nothing look small)."""
    f = Fields(read_json(path, "calibration", CALIBRATION_FIX, 1 << 20), str(path), CALIBRATION_FIX, "calibration")
    f.text("measured_on.cpu")
    f.mapping("runtime_config.llama_cpp")
    if not isinstance(f.get("runtime_config.llama_cpp.extra_buffer_types"), bool):
        raise f.bad("runtime_config.llama_cpp.extra_buffer_types", "must be true or false")
    if f.obj.get("schema") != CALIBRATION_SCHEMA:
        raise f.bad(
            "schema",
            f"is {f.obj.get('schema')!r}; this edgeq reads {CALIBRATION_SCHEMA} (GGUF's runtime "
            "buffers are measured on a stand-in of the model now, not fitted): run `edgeq calibrate` again",
        )
    f.number("gguf.base_mib", lo=0, hi=_MIB_TERM)
    for t, v in f.mapping("gguf.resident_factor").items():
        f.number(f"gguf.resident_factor.{t}", v, lo=0, hi=_FACTOR)
    if f.obj.get("onnx") is not None:
        f.number("onnx.base_mib", lo=0, hi=_MIB_TERM)
        f.number("onnx.kv_bytes_per_element", lo=0.5, hi=8)
        per_token = f.get("onnx.prompt_bytes_per_token_per_vocab")
        for q, v in per_token.items() if isinstance(per_token, dict) else [("", per_token)]:
            f.number(f"onnx.prompt_bytes_per_token_per_vocab{'.' + q if q else ''}", v, lo=0, hi=_BYTES_TERM)
        for table in ("resident_factor", "load_factor"):
            for q, v in f.mapping(f"onnx.{table}").items():
                f.number(f"onnx.{table}.{q}", v, lo=0, hi=_FACTOR)
    return f.obj


def machine_calibration(llama: dict | None = None) -> tuple[Path, dict]:
    """The shipped calibration closest to this machine: its llama.cpp configuration first, then its CPU."""

    if llama is None:
        llama = llama_config()
    cpu = platform_info()["cpu"]
    shipped = {p: load_calibration(p) for p in shipped_calibrations()}
    return max(
        shipped.items(),
        key=lambda pc: (
            pc[1]["runtime_config"]["llama_cpp"]["extra_buffer_types"] == llama["extra_buffer_types"],
            pc[1]["measured_on"]["cpu"] == cpu,
        ),
    )


def select_calibration(named: str | None, profile, llama: dict | None = None) -> tuple[Path, dict, list[str]]:
    """The calibration plan predicts with, and what the user should know about it.

    Named (--calibration, or the profile's `calibration:`, relative to the profile file, or a shipped
    name) → that file. Otherwise the shipped one measured with this machine's llama.cpp configuration,
    on this CPU if there is one. `llama` is this machine's configuration (probe.py) when known."""

    source = named or profile.calibration
    if source:
        path = Path(source)
        if named is None and not path.is_absolute():
            path = Path(profile.source).parent / path
        if not path.is_file() and (ASSETS / CALIBRATIONS_DIR / f"{source}.json").is_file():
            path = ASSETS / CALIBRATIONS_DIR / f"{source}.json"
        if not path.is_file():
            raise UsageError(
                f"calibration {source!r} not found",
                "--calibration" if named else profile.source,
                "pass an edgeq calibrate file, or one of: " + ", ".join(p.stem for p in shipped_calibrations()),
            )
        cal = load_calibration(path)
    cpu = platform_info()["cpu"]
    if llama is None:
        llama = llama_config()
    if not source:
        path, cal = machine_calibration(llama)
    warnings = []
    on = cal["measured_on"]
    if not source:
        warnings.append(
            f"profile {profile.name} names no calibration of its device: memory is predicted with {path.stem} "
            f"(measured on {on['cpu']}); run `edgeq calibrate` on the device and name the file in the profile"
        )
    cal_bufts = cal.get("runtime_config", {}).get("llama_cpp", {}).get("extra_buffer_types")
    if cal_bufts is not None and cal_bufts != llama["extra_buffer_types"]:
        warnings.append(
            f"{path.stem} was measured with llama.cpp extra buffer types {'on' if cal_bufts else 'off'}; this machine "
            f"runs with them {'on' if llama['extra_buffer_types'] else 'off'}, so bench here will differ from it"
        )
    elif on["cpu"] != cpu and source:
        warnings.append(f"{path.stem} was measured on {on['cpu']}, not on this machine's {cpu}")
    return path, cal, warnings


def calibrated(cal: dict, fmt: str, quant: str) -> tuple[dict, str | None]:
    """The terms for (fmt, quant) and, where this calibration never measured the type, the note that says
    which measured type stands in for it (the one with the nearest nominal bits)."""
    terms, measured = cal.get(fmt), cal.get("measured_types", {}).get(fmt, [])
    if not terms or not measured:  # e.g. calibrated with --no-onnx: borrow a shipped calibration's terms
        other = next(cal for cal in map(load_calibration, shipped_calibrations()) if cal.get(fmt))
        terms, _ = calibrated(other, fmt, quant)
        cpu = other["measured_on"]["cpu"]
        return terms, f"uncalibrated: this calibration has no {fmt} terms; predicted with {cpu}'s"
    if quant in measured:
        return terms, None
    bits = QUANT_TYPES[quant].bits_per_weight
    proxy = min(measured, key=lambda q: abs(QUANT_TYPES[q].bits_per_weight - bits))
    terms = dict(terms)
    for key in ("resident_factor", "load_factor", "prompt_bytes_per_token_per_vocab"):
        if fmt == FORMAT_ONNX and isinstance(terms.get(key), dict) and proxy in terms[key]:
            terms[key] = {**terms[key], quant: terms[key][proxy]}
    return terms, f"uncalibrated: {quant} was not measured here; predicted with {proxy}'s terms"

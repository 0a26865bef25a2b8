"""Render a bench record: llama-bench-style Markdown, versioned JSON, CSV, or JUnit XML (one test case per check)."""

from __future__ import annotations

import csv
import io
import json
import sys
from xml.sax.saxutils import quoteattr

from edgeq import __version__, report
from edgeq.checks import Check
from edgeq.io import FILE_MARK, write_text


def render(record: dict, output: str) -> str:
    return {"md": markdown, "json": as_json, "csv": as_csv, "junit": junit}[output](record)


def marked(record: dict, output: str) -> str:
    """The render of a file edgeq writes: it carries FILE_MARK, in the form its format allows (io.claim_output
    lets `--force` replace only a file so marked)."""
    mark = f"{FILE_MARK} {__version__}"
    if output == "json":
        return as_json({"provenance": mark, **record})
    if output == "csv":  # a column: a comment line would break CSV readers
        rows = as_csv(record).splitlines(keepends=True)
        return rows[0].rstrip("\r\n") + ",provenance\r\n" + "".join(r.rstrip("\r\n") + f",{mark}\r\n" for r in rows[1:])
    text = render(record, output)
    if output == "junit":
        head, _, rest = text.partition("\n")
        return f"{head}\n<!-- {mark} -->\n{rest}"
    return f"<!-- {mark} -->\n{text}"


def publish(record: dict, output: str, out: str | None) -> None:
    """The record in its output format, to the file (atomically, marked as edgeq's) or stdout; one ok/BREACH line
    per check on stderr. bench claimed the file before measuring (io.claim_output)."""

    text = render(record, output)
    if out:
        write_text(out, marked(record, output))
    else:
        sys.stdout.write(text)
    for c in map(Check.from_dict, record["checks"]):
        report.err.print(f"{'[green]ok[/]' if c.passed else '[red]BREACH[/]'} {c.line()}")


def markdown(r: dict) -> str:
    res, s, env = r["results"], r["settings"], r["environment"]
    size = f"{env['artifact_bytes'] / 2**20:.2f} MiB"
    name = r["artifact"].rsplit("/", 1)[-1]

    def ts(metric):
        return f"{res[metric]['mean']:.2f} ± {res[metric]['sd']:.2f}"

    rows = [
        "| model | size | backend | threads | test | t/s | TTFT ms | peak RSS MiB |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        f"| {name} | {size} | {r['backend']} | {s['threads']} | pp{s['prompt_tokens']} | {ts('prefill_tok_s')} | "
        f"{res['ttft_ms']['median']:.1f} | {max(res['peak_rss_mib']['samples']):.1f} |",
        f"| {name} | {size} | {r['backend']} | {s['threads']} | tg{s['gen_tokens']} | {ts('decode_tok_s')} | | |",
    ]
    foot = f"\n{s['reps']} fresh-process repetitions; load {res['load_s']['median']:.2f} s (median)"
    if s.get("adapters"):
        names = ", ".join(a.rsplit("/", 1)[-1] for a in s["adapters"])
        foot += f"; LoRA adapters {names} loaded with it, the first applied while timing"
    if "switch_ms" in res:
        foot += f"; switching to the next {res['switch_ms']['median']:.2f} ms (median), its prompt then prefilled anew"
    if r["checks"]:
        foot += "\n\n| check | measured | limit | result |\n| --- | ---: | ---: | --- |\n" + "\n".join(
            f"| {c['name']} | {c['measured']:.4g} {c['unit']} | {c['kind']} {c['limit']:g} | "
            f"{'pass' if c['passed'] else 'FAIL'} |"
            for c in r["checks"]
        )
    return "\n".join(rows) + foot + "\n"


def as_json(r: dict) -> str:
    return json.dumps(r, indent=2) + "\n"


def as_csv(r: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        ["artifact", "backend", "threads", "prompt_tokens", "gen_tokens", "metric", "mean", "sd", "min", "median", "n"]
    )
    s = r["settings"]
    for metric, st in r["results"].items():
        w.writerow(
            [
                r["artifact"],
                r["backend"],
                s["threads"],
                s["prompt_tokens"],
                s["gen_tokens"],
                metric,
                f"{st['mean']:.6g}",
                f"{st['sd']:.6g}",
                f"{st['min']:.6g}",
                f"{st['median']:.6g}",
                st["n"],
            ]
        )
    return buf.getvalue()


def junit(r: dict) -> str:
    cases = []
    for c in r["checks"]:
        message = "{:.4g} {} vs {} {:g}".format(c["measured"], c["unit"], c["kind"], c["limit"])
        body = "" if c["passed"] else f"<failure message={quoteattr(message)}/>"
        cases.append(f'  <testcase classname="edgeq.bench" name={quoteattr(c["name"])}>{body}</testcase>')
    failures = sum(not c["passed"] for c in r["checks"])
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<testsuite name={quoteattr("edgeq bench " + r["artifact"])} '
        f'tests="{len(cases)}" failures="{failures}">\n' + "\n".join(cases) + "\n</testsuite>\n"
    )

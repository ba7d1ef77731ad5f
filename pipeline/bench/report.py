"""Reports of a benchmark run: Markdown tables and a PNG chart beside the Parquet table."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.bench.results import GROUPS, IMPLS, READERS, is_model_family

MARKDOWN = "bench.md"
CHART = "bench.png"
SHORT = {"pipeline": "pipeline", "jax_bare": "JAX bare", "jax_bare_scan": "JAX bare scan",
         "torch_eager": "torch eager", "torch_compile": "torch.compile"}


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%" if value < 0.1 else f"{100 * value:.1f}%"


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def _rate(row: dict | None) -> str:
    if row is None:
        return "-"
    if row["status"] != "ok":
        return row["status"]
    return _num(row["steps_per_s"])


def _by_point(rows: list[dict]) -> dict[str, dict[str, dict]]:
    points: dict[str, dict[str, dict]] = {}
    for row in rows:
        points.setdefault(row["point"], {})[row["impl"]] = row
    return points


def side_by_side(rows: list[dict]) -> str:
    """One line per model point: steps/s of every implementation and the pipeline's ratios."""
    model = [r for r in rows if is_model_family(r["family"])]
    if not model:
        return ""
    head = ["point", "params", "batch", "prec", *(f"{SHORT[i]} steps/s" for i in IMPLS),
            *(f"pipeline / {SHORT[i]}" for i in IMPLS[1:]), "pipeline MFU", "input share", "compile s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, impls in _by_point(model).items():
        pipe = impls.get("pipeline", {})
        first = next(iter(impls.values()))
        cells = [name, _num(first.get("params")), str(first["batch"]), first["precision"],
                 *(_rate(impls.get(i)) for i in IMPLS),
                 *(_num(pipe.get(f"vs_{i}")) + "x" if pipe.get(f"vs_{i}") else "-" for i in IMPLS[1:]),
                 _pct(pipe.get("mfu")), _pct(pipe.get("input_share")), _num(pipe.get("compile_s"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def details(rows: list[dict]) -> str:
    """Every model-point measurement that ran or broke (skipped ones are listed under "Not measured")."""
    model = [r for r in rows if is_model_family(r["family"]) and r["status"] != "skipped"]
    if not model:
        return ""
    head = ["point", "impl", "status", "step ms (p25-p75)", "examples/s", "tokens/s", "compile s", "FLOPs/step XLA",
            "FLOPs/step model", "MFU", "program MiB", "peak MiB", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in model:
        if r["status"] == "ok":
            step = f"{1e3 * r['step_s']:.4g} ({1e3 * r['step_s_p25']:.4g}-{1e3 * r['step_s_p75']:.4g})"
        else:
            step = "-"
        cells = [r["point"], r["impl"], r["status"], step, _num(r.get("examples_per_s")), _num(r.get("tokens_per_s")),
                 _num(r.get("compile_s")), _num(r.get("flops_xla")), _num(r.get("flops_model")), _pct(r.get("mfu")),
                 _mib(r.get("mem_program_bytes")), _mib(r.get("mem_peak_bytes")), (r.get("detail") or "")[:120]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def readers(rows: list[dict]) -> str:
    data = [r for r in rows if r["family"] == "data"]
    if not data:
        return ""
    head = ["point", "reader", "status", "examples/s", "MB/s", "vs pyarrow read", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in data:
        mbs = None if r.get("bytes_per_s") is None else r["bytes_per_s"] / 1e6
        vs = r.get("vs_pyarrow_read")
        lines.append("| " + " | ".join([r["point"], r["impl"], r["status"], _num(r.get("examples_per_s")), _num(mbs),
                                         "-" if vs is None else f"{vs:.2f}x", r.get("detail") or ""]) + " |")
    return "\n".join(lines)


WAY_TITLES = {"loop": "steps/s", "stream": "steps/s", "sweep": "member-steps/s", "sweep-run": "member-steps/s",
              "first-step": "-", "trace": "steps/s"}


def ways(rows: list[dict]) -> str:
    """The loop, sweep, stream-train, process and trace points: each way with its figure and ratios."""
    other = [r for r in rows if r["family"] in GROUPS and r["family"] != "data"]
    if not other:
        return ""
    head = ["point", "way", "status", "steps/s", "seconds", "compile s", "ratios", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in other:
        ratios = ", ".join(f"{r[f'vs_{i}']:.3g}x vs {i}" for i in GROUPS[r["family"]]
                           if i != r["impl"] and r.get(f"vs_{i}"))
        rate = _num(r.get("steps_per_s"))
        if rate != "-" and WAY_TITLES.get(r["family"], "steps/s") != "steps/s":
            rate += f" ({WAY_TITLES[r['family']]})"
        note = r.get("detail") or ""
        if r.get("artifact"):
            note = f"{note}; {r['artifact']}" if note else r["artifact"]
        lines.append("| " + " | ".join([r["point"], r["impl"], r["status"], rate, _num(r.get("wall_s")),
                                         _num(r.get("compile_s")), ratios or "-", note[:160]]) + " |")
    return "\n".join(lines)


def skipped(rows: list[dict]) -> str:
    """Every point or implementation that did not run, and why (one line each point where all share it)."""
    lines = []
    for name, impls in _by_point(rows).items():
        bad = [r for r in impls.values() if r["status"] not in ("ok",) and r.get("detail") != "not in --peers"]
        if not bad:
            continue
        if len(bad) == len(impls) and len({(r["status"], r.get("detail")) for r in bad}) == 1:
            lines.append(f"- {name}: {bad[0]['status']}: {bad[0].get('detail') or ''}".rstrip(": "))
        else:
            lines += [f"- {name} / {r['impl']}: {r['status']}: {r.get('detail') or ''}".rstrip(": ") for r in bad]
    return "\n".join(lines)


def header(rows: list[dict]) -> str:
    r = rows[0]
    libs = ", ".join(f"{k} {r[k]}" for k in ("jax", "flax", "optax", "torch", "pyarrow") if r.get(k))
    peaks = ", ".join(dict.fromkeys(x["peak_source"] for x in rows if x.get("peak_source"))) or "n/a"
    return (f"Device: {r['device_kind']} x{r['device_count']} ({r['backend']}, {r['cpu_count']} CPU cores); "
            f"{libs}; commit {r.get('git_commit') or 'unknown'}; {r['time_utc']}; run {r['run_id']}.\n"
            f"Peak for MFU: {peaks}.")


def markdown(rows: list[dict]) -> str:
    parts = [f"# Benchmark run {rows[0]['run_id']}", header(rows)]
    for title, table in (("Side by side (steps/s; ratios: how many times faster the pipeline is, "
                          "round by round where timed round-robin)",
                          side_by_side(rows)), ("Every measurement", details(rows)),
                         ("Readers (data suite)", readers(rows)),
                         ("Loops, sweeps, streaming, processes and traces", ways(rows)),
                         ("Not measured, and why", skipped(rows))):
        if table:
            parts += [f"## {title}", table]
    return "\n\n".join(parts) + "\n"


def device_title(row: dict) -> str:
    """``NVIDIA H100 80GB HBM3 x1 (gpu)``; the backend only where the device's name does not say it (``cpu x1``)."""
    kind, backend = str(row.get("device_kind", "?")), str(row.get("backend", ""))
    count = f" x{row['device_count']}" if row.get("device_count") else ""
    return f"{kind}{count}" + (f" ({backend})" if backend and backend.lower() not in kind.lower() else "")


def chart_figure(rows: list[dict]):
    """The figure of ``bench.png``: steps/s and MFU per model point, reader examples/s per data point,
    implementations side by side; each panel's legend to its right, off the bars. None: nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    model = _by_point([r for r in rows if is_model_family(r["family"])])
    data = _by_point([r for r in rows if r["family"] == "data"])
    panels = [p for p in (("steps/s", model, IMPLS, "steps_per_s", True), ("MFU", model, IMPLS, "mfu", False),
                          ("reader examples/s", data, READERS, "examples_per_s", True)) if p[1]]
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6, 1.6 * max(len(p[1]) for p in panels) + 3) + 2,
                                                      3.6 * len(panels)), squeeze=False, layout="constrained")
    for ax, (title, points, impls, key, log) in zip(axes[:, 0], panels):
        names = list(points)
        width = 0.8 / len(impls)
        for j, impl in enumerate(impls):
            xs = np.arange(len(names)) + (j - (len(impls) - 1) / 2) * width
            values = [points[n].get(impl, {}).get(key) or 0.0 for n in names]
            ax.bar(xs, values, width, label=SHORT.get(impl, impl))
            for x, n, v in zip(xs, names, values):
                status = points[n].get(impl, {}).get("status")
                if not v and status and status != "ok":
                    ax.annotate(status, (x, 0), rotation=90, ha="center", va="bottom", fontsize=7, color="gray",
                                xycoords=("data", "axes fraction"))
        ax.set_xticks(np.arange(len(names)), names, fontsize=8)
        ax.set_title(title)
        if log:
            if any(points[n].get(i, {}).get(key) for n in names for i in impls):  # log of nothing warns
                ax.set_yscale("log")
        else:
            ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.suptitle(device_title(rows[0]), fontsize=10)
    return fig


def draw_chart(rows: list[dict], path: Path) -> Path | None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # accelerator images may not have it; the tables are written regardless
        return None
    fig = chart_figure(rows)  # first: it picks the Agg backend before pyplot is imported here
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    from pipeline.track.plot import save_figure

    save_figure(fig, path)
    plt.close(fig)
    return path


def write_reports(folder: Path, rows: list[dict], chart: bool = True) -> tuple[Path, Path | None]:
    """The new rows as ``bench.md`` and (with ``chart``) ``bench.png`` in ``folder`` (the latest run)."""
    md = folder / MARKDOWN
    tmp = md.with_name(f".{md.name}.{os.getpid()}.tmp")
    tmp.write_text(markdown(rows))
    tmp.replace(md)  # a reader (or a copy into docs/) never sees half a report
    return md, draw_chart(rows, folder / CHART) if chart else None

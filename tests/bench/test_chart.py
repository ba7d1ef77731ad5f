"""The benchmark chart (``bench.png``), read back from its matplotlib objects: the bars are the measured
figures, each legend sits beside its panel, not on the bars, and the title names the device once."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from pipeline.bench.report import chart_figure, device_title  # noqa: E402
from pipeline.bench.results import IMPLS  # noqa: E402


def rows(device_kind: str = "cpu", backend: str = "cpu") -> list[dict]:
    out = []
    for point, family, base in (("mlp-a", "mlp", 1000.0), ("lm-b", "transformer", 40.0)):
        for j, impl in enumerate(IMPLS):
            ok = not (point == "lm-b" and impl == "torch_compile")
            out.append({"point": point, "impl": impl, "family": family, "status": "ok" if ok else "unavailable",
                        "steps_per_s": base * (1 + j) if ok else None, "mfu": 0.01 * (j + 1) if ok else None,
                        "device_kind": device_kind, "backend": backend, "device_count": 1})
    return out


def test_bars_are_the_measurements_and_legends_sit_beside_the_panels():
    fig = chart_figure(rows())
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    steps, mfu = fig.axes
    assert steps.get_title() == "steps/s" and mfu.get_title() == "MFU"
    for ax, key in ((steps, "steps_per_s"), (mfu, "mfu")):
        heights = {(c.get_label(), i): bar.get_height() for c in ax.containers for i, bar in enumerate(c)}
        for r in rows():
            label = {"pipeline": "pipeline", "jax_bare": "JAX bare", "jax_bare_scan": "JAX bare scan",
                     "torch_eager": "torch eager", "torch_compile": "torch.compile"}[r["impl"]]
            assert heights[(label, ["mlp-a", "lm-b"].index(r["point"]))] == pytest.approx(r[key] or 0.0)
        legend = ax.get_legend()
        assert [t.get_text() for t in legend.get_texts()][:2] == ["pipeline", "JAX bare"]
        box = legend.get_window_extent(renderer)
        assert box.x0 >= ax.get_window_extent(renderer).x1  # right of the drawing area, over no bar
        assert box.x1 <= fig.bbox.x1 + 1  # and inside the picture
    plt.close(fig)


@pytest.mark.parametrize(("kind", "backend", "title"), [
    ("cpu", "cpu", "cpu x1"),
    ("NVIDIA H100 80GB HBM3", "gpu", "NVIDIA H100 80GB HBM3 x1 (gpu)"),
    ("TPU v5 lite", "tpu", "TPU v5 lite x1"),
])
def test_the_title_names_the_device_once(kind, backend, title):
    assert device_title(rows(kind, backend)[0]) == title
    fig = chart_figure(rows(kind, backend))
    assert fig._suptitle.get_text() == title
    plt.close(fig)

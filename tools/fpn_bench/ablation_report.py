"""The ablation's outputs: a Markdown table, a bar chart and the JSON of every figure.

A record is one variant's result as :func:`.ablation.run_variant` returns it:
``row`` (the paper's row letter), ``variant``, ``label``, ``rpn_features``, ``roi_features``,
``anchors_per_image``, and ``ar`` / ``ap``: {metric: percent}.
"""

import json
from typing import Dict, Sequence

from tabulate import tabulate

__all__ = ["TABLE_AR", "TABLE_AP", "markdown_table", "bar_chart", "write_outputs"]

#: Columns of the Markdown table: the paper's Table 1 (AR) and Table 3 (AP) columns.
TABLE_AR = ("AR@100", "AR@1000", "ARs@1000", "ARm@1000", "ARl@1000")
TABLE_AP = ("AP", "AP50", "APs", "APm", "APl")
#: Bar colour of each paper row, the same in every chart.
_ROWS = "abcdef"


def markdown_table(records: Sequence[dict]) -> str:
    """The results as a GitHub Markdown table: one row per variant, the paper's Table 1 and
    Table 3 columns, percentages with one decimal ("nan" where COCO has no objects of a size)."""
    head = ["row", "variant", "RPN features", "RoI features", "anchors / image", *TABLE_AR]
    head += [f"box {k}" for k in TABLE_AP]
    rows = [
        [
            f"({r['row']})",
            f"{r['label']} `{r['variant']}`",
            ", ".join(r["rpn_features"]),
            ", ".join(r["roi_features"]),
            r["anchors_per_image"],
            *[r["ar"][k] for k in TABLE_AR],
            *[r["ap"][k] for k in TABLE_AP],
        ]
        for r in records
    ]
    return tabulate(rows, headers=head, tablefmt="github", floatfmt=".1f") + "\n"


def bar_chart(records: Sequence[dict], path: str, title: str = "") -> None:
    """Grouped bars, saved as PNG to ``path``: proposal AR (left) and box AP (right), one colour
    per variant."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.8), constrained_layout=True)
    axes = fig.subplots(1, 2)
    width = 0.8 / max(1, len(records))
    panels = (
        (axes[0], TABLE_AR, "ar", "RPN proposal recall (%)"),
        (axes[1], TABLE_AP, "ap", "box AP (%)"),
    )
    for ax, keys, group, ylabel in panels:
        for i, r in enumerate(records):
            xs = [j + (i - (len(records) - 1) / 2) * width for j in range(len(keys))]
            label = f"({r['row']}) {r['variant']}"
            ax.bar(
                xs,
                [r[group][k] for k in keys],
                width,
                label=label,
                color=f"C{_ROWS.index(r['row'])}",
            )
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels(keys)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize="small", loc="upper left")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)


def write_outputs(result: dict, paths: Dict[str, str]) -> None:
    """Writes ``result`` (``{"budget": ..., "variants": [records], "metrics": ...}``): its table
    to ``paths["md"]``, all of it to ``paths["json"]``, its chart to ``paths["png"]``."""
    records, budget = result["variants"], result["budget"]
    with open(paths["md"], "w") as f:
        f.write(markdown_table(records))
    with open(paths["json"], "w") as f:
        json.dump(result, f, indent=2)
    title = (
        f"fpn_shapes {budget['image_size']} px, "
        f"{budget['num_train']} train / {budget['num_val']} val images, "
        f"{budget['iterations']} iterations x batch {budget['batch']}, d = {budget['fpn_channels']}"
    )
    bar_chart(records, paths["png"], title)

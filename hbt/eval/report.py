"""What an evaluation leaves behind, and ``hbt report`` over several runs.

Per evaluation: ``metrics.json`` (every setting, language pair, bias, timings),
``summary.md`` (headline numbers and a per-language table), ``cross_heatmap.png`` (the
query-language x candidate-language mAP matrix, values in the cells; the diagonal is
monolingual) and ``multi.run`` (the multilingual top-k lists as a TREC run file).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from hbt.errors import InputError, writing

HEADLINE = [("mono_map", "mean mono mAP"), ("cross_map", "mean cross mAP"), ("multi_map", "multilingual mAP"),
            ("rank_spread", "rank spread"), ("own_language_first", "own-language first"), ("map_std", "mAP std")]


def map_matrix(results: dict) -> tuple[list[str], list[str], np.ndarray]:
    """Query languages, candidate languages and the mAP of every pair (NaN where absent)."""
    pairs = {(x, x): m for x, m in results.get("mono", {}).items()}
    pairs.update({tuple(key.split("-", 1)): m for key, m in results.get("cross", {}).items()})
    rows = sorted({x for x, _ in pairs})
    cols = sorted({y for _, y in pairs})
    matrix = np.full((len(rows), len(cols)), np.nan)
    for (x, y), m in pairs.items():
        if m.get("queries"):
            matrix[rows.index(x), cols.index(y)] = m["map"]
    return rows, cols, matrix


def draw_heatmap(ax, rows: list[str], cols: list[str], matrix: np.ndarray, title: str, vmax: float | None = None):
    """Draw a query-language x candidate-language mAP matrix, values in the cells, on
    ``ax``; returns the image (for a colour bar). Shared by one evaluation's heatmap and
    the side-by-side strategy heatmaps of a sweep."""
    finite = np.isfinite(matrix).any()
    top = vmax if vmax is not None else (max(1e-9, float(np.nanmax(matrix))) if finite else 1.0)
    image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=top)
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("candidate language")
    ax.set_ylabel("query language")
    ax.set_title(title, fontsize=10)
    size = 7 if len(cols) <= 8 else 5.5
    for i in range(len(rows)):
        for j in range(len(cols)):
            if np.isfinite(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=size,
                        color="black" if matrix[i, j] > 0.6 * top else "white")
    return image


def heatmap(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols, matrix = map_matrix(results)
    fig, ax = plt.subplots(figsize=(max(4.8, 1.4 + 0.62 * len(cols)), max(3.6, 1.2 + 0.55 * len(rows))))
    image = draw_heatmap(ax, rows, cols, matrix, title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="mAP")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def headline_lines(results: dict) -> list[str]:
    """``hbt eval``'s console lines: the headline numbers, then the centred ones (when
    evaluated) on a line that says whose means were removed."""
    from hbt.eval.debias import PREFIX  # imports torch: not at the top, which hbt report and the sweep's tables import

    s = results["summary"]
    lines = [", ".join(f"{k} {v:.4f}" for k, v in s.items() if not k.startswith(PREFIX))]
    if "centered" in results:
        centred = ", ".join(f"{k[len(PREFIX):]} {v:.4f}" for k, v in s.items() if k.startswith(PREFIX))
        lines.append(f"{results['centered']['label']}: {centred}")
    return lines


def summary_markdown(results: dict, title: str) -> str:
    from hbt.eval.debias import PREFIX  # as in headline_lines

    s = results["summary"]
    centred = results.get("centered")
    names = [name for _, name in HEADLINE]
    if centred is None:
        lines = [f"# {title}", "", "| " + " | ".join(names) + " |", "|" + "---:|" * len(HEADLINE)]
        lines.append("| " + " | ".join(f"{s[key]:.4f}" if key in s else "-" for key, _ in HEADLINE) + " |")
    else:  # one row per embedding: plain, then centred (eval.debias)
        lines = [f"# {title}", "", "| embeddings | " + " | ".join(names) + " |", "|---|" + "---:|" * len(HEADLINE)]
        for label, prefix in (("plain", ""), (centred["label"], PREFIX)):
            lines.append(f"| {label} | " + " | ".join(f"{s[prefix + key]:.4f}" if prefix + key in s else "-"
                                                     for key, _ in HEADLINE) + " |")
    rows, cols, matrix = map_matrix(results)
    extra = " centered multilingual mAP |" if centred is not None and "multi" in centred else ""
    lines += ["", "| query language | mono mAP | mean cross mAP (as query) | multilingual mAP | multilingual R@10 |" + extra,
              "|---|---:|---:|---:|---:|" + ("---:|" if extra else "")]
    for i, x in enumerate(rows):
        mono = results.get("mono", {}).get(x, {}).get("map")
        cross = [matrix[i, j] for j, y in enumerate(cols) if y != x and np.isfinite(matrix[i, j])]
        multi = results.get("multi", {}).get(x, {})
        cells = [f"{mono:.4f}" if mono is not None else "-", f"{np.mean(cross):.4f}" if cross else "-",
                 f"{multi['map']:.4f}" if "map" in multi else "-", f"{multi['recall@10']:.4f}" if "recall@10" in multi else "-"]
        if extra:
            centred_multi = centred["multi"].get(x, {})
            cells.append(f"{centred_multi['map']:.4f}" if "map" in centred_multi else "-")
        lines.append(f"| {x} | " + " | ".join(cells) + " |")
    t = results.get("timings", {})
    lines += ["", "Timings (s): " + ", ".join(f"{k[:-2]} {v:.2f}" for k, v in t.items())]
    return "\n".join(lines) + "\n"


def write_outputs(results: dict, out: Path, title: str) -> None:
    """metrics.json, summary.md, cross_heatmap.png and multi.run in ``out`` (a full disk:
    one line naming ``out``)."""
    with writing(out):
        _write_outputs(results, out, title)


def _write_outputs(results: dict, out: Path, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    topk = results.get("topk")
    plain = {k: v for k, v in results.items() if k != "topk"}
    (out / "metrics.json").write_text(json.dumps(plain, indent=1))
    (out / "summary.md").write_text(summary_markdown(results, title))
    if results.get("mono") or results.get("cross"):
        heatmap(results, out / "cross_heatmap.png", f"{title}\nmAP, query language x candidate language")
    if topk:
        with (out / "multi.run").open("w") as f:
            qids, cids = topk["query_ids"], topk["cand_ids"]
            offset = 0
            for x in sorted(topk["lists"]):
                scores, ids = topk["lists"][x]
                for row in range(len(ids)):
                    for rank, (cid, score) in enumerate(zip(ids[row], scores[row]), start=1):
                        if cid >= 0:
                            f.write(f"{qids[offset + row]} Q0 {cids[cid]} {rank} {score:.6f} hbt\n")
                offset += len(ids)


def latest_metrics(run_dir: Path) -> Path:
    """A run's newest evaluation: ``eval/epoch-N/metrics.json`` with the largest N, or a
    ``metrics.json`` given directly or in the directory (``hbt eval --out``)."""
    if not run_dir.exists():
        raise InputError(str(run_dir), "no such file or directory")
    if run_dir.is_file():
        return run_dir
    direct = run_dir / "metrics.json"
    epochs = sorted((run_dir / "eval").glob("*/metrics.json"), key=lambda p: int(p.parent.name.split("-")[-1]) if p.parent.name.split("-")[-1].isdigit() else -1)
    if epochs:
        return epochs[-1]
    if direct.exists():
        return direct
    raise InputError(str(run_dir), "no evaluation metrics.json in this run directory")


def compare(run_dirs: list[Path], out: Path) -> str:
    """One Markdown table (also CSV) and one plot of several runs' headline numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for run in run_dirs:
        path = latest_metrics(run)
        summary = json.loads(path.read_text())["summary"]
        rows.append((run.name if run.is_dir() else run.parent.name, summary))
    out.mkdir(parents=True, exist_ok=True)
    header = ["run"] + [name for _, name in HEADLINE]
    table = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * len(HEADLINE)]
    with (out / "report.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run"] + [key for key, _ in HEADLINE])
        for name, s in rows:
            table.append(f"| {name} | " + " | ".join(f"{s[k]:.4f}" if k in s else "-" for k, _ in HEADLINE) + " |")
            writer.writerow([name] + [s.get(k, "") for k, _ in HEADLINE])
    markdown = "\n".join(table) + "\n"
    (out / "report.md").write_text(markdown)

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    keys = HEADLINE[:3]
    width = 0.8 / len(keys)
    for i, (key, name) in enumerate(keys):
        values = [s.get(key, np.nan) for _, s in rows]
        left.bar(np.arange(len(rows)) + i * width, values, width, label=name)
    left.set_xticks(np.arange(len(rows)) + width * (len(keys) - 1) / 2, [n for n, _ in rows], rotation=20)
    left.set_ylabel("mAP")
    left.legend(fontsize=8)
    right.bar(range(len(rows)), [s.get("own_language_first", np.nan) for _, s in rows], color="tab:red")
    right.set_xticks(range(len(rows)), [n for n, _ in rows], rotation=20)
    right.set_ylabel("own-language-first share (lower: less bias)")
    fig.tight_layout()
    fig.savefig(out / "report.png", dpi=120)
    plt.close(fig)
    return markdown

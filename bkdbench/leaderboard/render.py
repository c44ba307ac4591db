"""Summaries as tables: rich renderables for the terminal, Markdown, LaTeX and CSV strings.

Nothing here prints; the CLI decides where output goes. Tables have one row per label and one
column per imbalance factor, ordered high to low (100, 50, 10) as papers do. Rows are ranked by
their value in the first (most imbalanced) column, best first, then by name. The best mean of each
column is highlighted; all tied bests are.
"""
from __future__ import annotations

import math

import pandas as pd
from rich.table import Table

from bkdbench.leaderboard.aggregate import LOWER_IS_BETTER, check_metric

# What each number is, said plainly, for captions.
DESCRIPTIONS = {
    "top1": "balanced test top-1 %, last epoch",
    "top1_best_epoch": "balanced test top-1 %, best test epoch (papers' protocol, optimistic)",
    "val_top1": "balanced validation top-1 %, last epoch",
    # Thresholds are per dataset (CIFAR: >100 / 20-100 / <20 images; digits: >50 / 15-50 / <15).
    "many": "test accuracy % on many-shot classes (dataset's threshold; CIFAR >100 images), last epoch",
    "medium": "test accuracy % on medium-shot classes (CIFAR 20-100 images), last epoch",
    "few": "test accuracy % on few-shot classes (dataset's threshold; CIFAR <20 images), last epoch",
    "ece": "expected calibration error % (15 bins), last epoch, lower is better",
    "nll": "test negative log-likelihood (nats), last epoch, lower is better",
}


# Methods whose rows are not the paper's exact procedure, said under every table that shows them.
METHOD_NOTES = {
    "subset-kd": "subset-kd is bkdbench's reading of Ju et al. 2021: the paper gives only \"weighted knowledge "
                 "distillation\"; the subset weighting and restricted KL are bkdbench's (methods/subset_kd.py)",
    "cbd-linear": "cbd-linear is bkdbench's earlier CBD, not the official code: linear head, a projection used "
                  "only by the distillation term, 2 CE teachers (cbd follows the official code)",
}


def method_notes(labels) -> list[str]:
    """The notes of the methods among ``labels`` (a label starts with its method's name)."""
    methods = {str(label).split(" ")[0] for label in labels}
    return [note for name, note in METHOD_NOTES.items() if name in methods]


def caption(metric: str) -> str:
    check_metric(metric)
    return f"{DESCRIPTIONS[metric]}; mean ± std over n seeds, (n) in brackets; best per column in bold"


def _digits(metric: str) -> int:
    return 3 if metric == "nll" else 2


def format_cell(mean: float, std: float, n: int, metric: str) -> str:
    """``"71.23 ± 0.45 (3)"``; a single seed has no spread: ``"71.23 ± – (1)"``."""
    d = _digits(metric)
    spread = "–" if std is None or math.isnan(std) else f"{std:.{d}f}"
    return f"{mean:.{d}f} ± {spread} ({int(n)})"


def _factor_name(factor: float) -> str:
    return "IF ?" if pd.isna(factor) else f"IF {factor:g}"


def _grid(summary: pd.DataFrame, metric: str):
    """Per dataset: (dataset, factors high→low, [(label, {factor: (cell, is_best)})])."""
    check_metric(metric)
    lower = metric in LOWER_IS_BETTER
    grids = []
    for dataset, part in summary.groupby("dataset", sort=True, dropna=False):
        factors = sorted(part["imbalance_factor"].unique(), reverse=True)
        best = {}
        for factor in factors:
            means = part.loc[part["imbalance_factor"] == factor, "mean"]
            best[factor] = means.min() if lower else means.max()
        cells: dict[str, dict] = {}
        for row in part.itertuples(index=False):
            text = format_cell(row.mean, row.std, row.n, metric)
            cells.setdefault(row.label, {})[row.imbalance_factor] = (
                text, row.mean == best[row.imbalance_factor], row.mean)

        def rank(label: str):
            first = cells[label].get(factors[0])
            if first is None:
                return (1, 0.0, label)
            return (0, first[2] if lower else -first[2], label)

        rows = [(label, cells[label]) for label in sorted(cells, key=rank)]
        grids.append((dataset, factors, rows))
    return grids


def leaderboard_tables(summary: pd.DataFrame, metric: str) -> list[tuple[str, Table]]:
    """One rich Table per dataset; best mean per column in bold green."""
    tables = []
    for dataset, factors, rows in _grid(summary, metric):
        notes = method_notes(label for label, _ in rows)
        table = Table(title=str(dataset), caption="\n".join([caption(metric), *notes]), caption_justify="left")
        table.add_column("method")
        for factor in factors:
            table.add_column(_factor_name(factor), justify="right")
        for label, cells in rows:
            shown = []
            for factor in factors:
                text, is_best, _ = cells.get(factor, ("–", False, None))
                shown.append(f"[bold green]{text}[/]" if is_best else text)
            table.add_row(_escape_rich(label), *shown)
        tables.append((str(dataset), table))
    return tables


def _escape_rich(text: str) -> str:
    # Labels may contain "[" (rare, but a markup tag would silently vanish).
    return text.replace("[", r"\[")


def to_markdown(summary: pd.DataFrame, metric: str) -> str:
    """GitHub-flavoured Markdown: a heading and a table per dataset, best in **bold**."""
    parts = []
    for dataset, factors, rows in _grid(summary, metric):
        header = "| method | " + " | ".join(_factor_name(f) for f in factors) + " |"
        rule = "|---|" + "---:|" * len(factors)
        lines = [f"### {dataset}", "", f"_{caption(metric)}_", "", header, rule]
        for label, cells in rows:
            shown = []
            for factor in factors:
                text, is_best, _ = cells.get(factor, ("–", False, None))
                shown.append(f"**{text}**" if is_best else text)
            lines.append(f"| {label.replace('|', '/')} | " + " | ".join(shown) + " |")
        lines += ["", *(f"_{note}_" for note in method_notes(label for label, _ in rows))]
        parts.append("\n".join(lines).rstrip("\n"))
    return "\n\n".join(parts) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex_cell(text: str) -> str:
    return _latex_escape(text).replace(" ± ", r" $\pm$ ").replace("–", "--")


def to_latex(summary: pd.DataFrame, metric: str) -> str:
    """One booktabs ``table`` per dataset (needs ``\\usepackage{booktabs}``); best in \\textbf."""
    parts = []
    for dataset, factors, rows in _grid(summary, metric):
        lines = [r"\begin{table}[t]", r"\centering",
                 rf"\caption{{{_latex_escape(dataset)}: {_latex_escape(caption(metric))}}}",
                 r"\begin{tabular}{l" + "r" * len(factors) + "}", r"\toprule",
                 "Method & " + " & ".join(_latex_escape(_factor_name(f)) for f in factors)
                 + r" \\", r"\midrule"]
        for label, cells in rows:
            shown = []
            for factor in factors:
                text, is_best, _ = cells.get(factor, ("–", False, None))
                cell = _latex_cell(text)
                shown.append(rf"\textbf{{{cell}}}" if is_best else cell)
            lines.append(_latex_escape(label) + " & " + " & ".join(shown) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def to_csv(summary: pd.DataFrame) -> str:
    """The summary as CSV (dataset, imbalance_factor, label, mean, std, n[, metric])."""
    frame = summary.copy()
    if "metric" in summary.attrs and "metric" not in frame:
        frame["metric"] = summary.attrs["metric"]
    return frame.to_csv(index=False)


def comparison_table(result: pd.DataFrame) -> Table:
    """A paired comparison (from ``paired_difference``) as a rich Table.

    Long labels go in the title as A and B so the columns stay narrow.
    """
    a, b = result.attrs.get("a", "A"), result.attrs.get("b", "B")
    metric = result.attrs.get("metric", "top1")
    d = _digits(metric)
    lower = metric in LOWER_IS_BETTER
    table = Table(
        title=f"A = {_escape_rich(a)}, B = {_escape_rich(b)}: {metric}, paired by seed",
        caption=(f"{DESCRIPTIONS.get(metric, metric)}. Δ = mean over seed pairs of (A − B); "
                 "95% CI by Student's t (none with fewer than 2 pairs); "
                 f"{'lower' if lower else 'higher'} is better. "
                 "Δ in green/red: the CI excludes 0 in favour of/against A."),
        caption_justify="left")
    table.add_column("dataset")
    for name in ("IF", "pairs", "mean A", "mean B", "Δ = A − B", "95% CI"):
        table.add_column(name, justify="right", no_wrap=True)
    for row in result.itertuples(index=False):
        ci = "–" if math.isnan(row.ci_low) else f"[{row.ci_low:+.{d}f}, {row.ci_high:+.{d}f}]"
        delta = f"{row.mean_diff:+.{d}f}"
        if not math.isnan(row.ci_low) and (row.ci_low > 0 or row.ci_high < 0):
            a_wins = (row.mean_diff < 0) if lower else (row.mean_diff > 0)
            delta = f"[{'green' if a_wins else 'red'}]{delta}[/]"
        table.add_row(str(row.dataset), f"{row.imbalance_factor:g}", str(row.n),
                      f"{row.mean_a:.{d}f}", f"{row.mean_b:.{d}f}", delta, ci)
    return table


# --- published results (bkdbench published) -------------------------------------------------------

PUBLISHED_CAPTION = ("published top-1 % as its source reports it (mostly the best test epoch); "
                     "– where the source gives none; citation and URL in --format csv")


def _pub_value(value) -> str:
    return "–" if value is None or pd.isna(value) else f"{float(value):g}"


def _pub_budget(row) -> str:
    epochs = "?" if pd.isna(row.epochs) else f"{int(row.epochs)}"
    return epochs + ("" if pd.isna(row.stage2_epochs) else f"+{int(row.stage2_epochs)}")


def _text(value) -> str:
    return value if isinstance(value, str) else ""


def _pub_remark(row) -> str:
    comparable = _text(row.not_comparable) and f"not comparable: {row.not_comparable}"
    return "; ".join(p for p in (_text(row.reported), _text(row.note), comparable) if p)


def _pub_cells(row) -> list[str]:
    imbalance = row.imbalance if isinstance(row.imbalance, str) else f"{float(row.imbalance):g}"
    return [str(row.dataset), imbalance, str(row.model), _pub_budget(row), str(row.method), _pub_value(row.top1),
            _pub_value(row.many), _pub_value(row.medium), _pub_value(row.few), str(row.source_class),
            "; ".join(p for p in (str(row.citation), _text(row.where)) if p), _pub_remark(row)]


PUB_HEADINGS = ["dataset", "IF", "model", "epochs", "method", "top-1", "many", "medium", "few", "source", "citation",
                "remark"]


def published_tables(frame: pd.DataFrame) -> list[Table]:
    """One rich Table per dataset (long citations wrap)."""
    tables = []
    for dataset, part in frame.groupby("dataset", sort=True):
        table = Table(title=f"published: {dataset}", caption=PUBLISHED_CAPTION, caption_justify="left")
        for heading in [*PUB_HEADINGS[1:10], "where", "remark"]:
            table.add_column(heading, justify="right" if heading in ("top-1", "many", "medium", "few") else "left",
                             overflow="fold")
        for row in part.itertuples(index=False):  # the terminal shows the source's key; citations: csv/markdown
            cells = _pub_cells(row)
            where = "; ".join(p for p in (str(row.source), _text(row.where)) if p)
            table.add_row(*(_escape_rich(c) for c in [*cells[1:10], where, cells[11]]))
        tables.append(table)
    return tables


def published_markdown(frame: pd.DataFrame) -> str:
    lines = [f"_{PUBLISHED_CAPTION}_", "", "| " + " | ".join(PUB_HEADINGS) + " |",
             "|" + "---|" * 5 + "---:|" * 4 + "---|" * 3]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(c.replace("|", "/") for c in _pub_cells(row)) + " |")
    return "\n".join(lines) + "\n"


def published_latex(frame: pd.DataFrame) -> str:
    """One booktabs table, citations left out (they go in the paper's bibliography)."""
    heads = PUB_HEADINGS[:10]
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_latex_escape(PUBLISHED_CAPTION)}}}",
             r"\begin{tabular}{lllll" + "r" * 4 + "l}", r"\toprule",
             " & ".join(_latex_escape(h) for h in heads) + r" \\", r"\midrule"]
    for row in frame.itertuples(index=False):
        lines.append(" & ".join(_latex_cell(c) for c in _pub_cells(row)[:10]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


PUB_CSV = ["dataset", "imbalance", "model", "epochs", "stage2_epochs", "method", "top1", "many", "medium", "few",
           "source", "source_class", "citation", "where", "url", "reported", "note", "not_comparable", "table"]


def published_csv(frame: pd.DataFrame) -> str:
    return frame[PUB_CSV].to_csv(index=False)


# --- ours beside the published results (leaderboard --published) ----------------------------------

VERSUS_HEADINGS = ["method", "IF", "ours", "published", "Δ", "95% interval", "source / why not"]


def _versus_rows(result: pd.DataFrame, dataset) -> list[list[str]]:
    from bkdbench.leaderboard.versus import cells

    part = result[result["dataset"] == dataset]
    return [list(cells(row).values()) for row in part.itertuples(index=False)]


def versus_tables(result: pd.DataFrame) -> list[Table]:
    from bkdbench.leaderboard.versus import CAPTION

    metric = result.attrs.get("metric", "top1")
    tables = []
    for dataset in sorted(result["dataset"].unique()):
        table = Table(title=f"{dataset}: {metric}, ours beside the published", caption=CAPTION, caption_justify="left")
        for heading in VERSUS_HEADINGS:
            table.add_column(heading, justify="right" if heading in ("ours", "published", "Δ") else "left",
                             overflow="fold")
        for cells in _versus_rows(result, dataset):
            table.add_row(*(_escape_rich(c) for c in cells))
        tables.append(table)
    return tables


def versus_markdown(result: pd.DataFrame) -> str:
    from bkdbench.leaderboard.versus import CAPTION

    parts = []
    for dataset in sorted(result["dataset"].unique()):
        lines = [f"### {dataset}", "", f"_{CAPTION}_", "", "| " + " | ".join(VERSUS_HEADINGS) + " |",
                 "|---|---|---:|---:|---:|---|---|"]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in cells) + " |" for cells in _versus_rows(result, dataset)]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def versus_latex(result: pd.DataFrame) -> str:
    from bkdbench.leaderboard.versus import CAPTION

    parts = []
    for dataset in sorted(result["dataset"].unique()):
        lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_latex_escape(dataset)}: {_latex_escape(CAPTION)}}}",
                 r"\begin{tabular}{llrrrll}", r"\toprule",
                 " & ".join(_latex_escape(h) for h in VERSUS_HEADINGS).replace("Δ", r"$\Delta$") + r" \\", r"\midrule"]
        lines += [" & ".join(_latex_cell(c) for c in cells) + r" \\" for cells in _versus_rows(result, dataset)]
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def versus_csv(result: pd.DataFrame) -> str:
    frame = result.copy()
    frame["metric"] = result.attrs.get("metric", "top1")
    return frame.to_csv(index=False)

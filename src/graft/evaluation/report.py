"""`graft report`: several runs (or ensembles) side by side, as Markdown and as one self-contained HTML page.

Per model: S, Top-1/3/5, image top-1, images/s and ms per observation measured here (optionally also with test-time
views), calibration, coverage vs accuracy under a reject threshold, fusion rules on validation, the most confused
pairs, accuracy per view, and the training curves (embedded in the HTML).
"""

from __future__ import annotations

import base64
import html
from collections import Counter
from pathlib import Path

import numpy as np

from graft.data.manifest import Manifest
from graft.device import Device, resolve_device
from graft.evaluation.evaluate import evaluate_model
from graft.evaluation.plots import reliability_plot
from graft.features.tta import DEFAULT_TTA
from graft.files import atomic_write_text
from graft.model.ensemble import Ensemble
from graft.model.fusion import fuse_observations
from graft.run import RunFiles, evaluation_part, load_model, read_manifest, read_results
from graft.tables import head_selection_table, results_table


def confused_pairs(probabilities: np.ndarray, part: Manifest, labels: list[str], fusion: str, top: int = 10):
    """Most frequent (true label, predicted label) mistakes per observation."""
    fused = fuse_observations(probabilities, [r.observation for r in part], fusion)
    truth = {r.observation: r.label for r in part}
    mistakes = Counter((truth[o], labels[int(row.argmax())]) for o, row in zip(fused.observations, fused.scores,
                                                                                strict=True)
                       if labels[int(row.argmax())] != truth[o])
    return mistakes.most_common(top)


def per_view_accuracy(probabilities: np.ndarray, part: Manifest, labels: list[str]) -> dict[str, tuple[float, int]]:
    predicted = [labels[int(i)] for i in probabilities.argmax(axis=1)]
    by_view: dict[str, list[bool]] = {}
    for record, guess in zip(part, predicted, strict=True):
        by_view.setdefault(record.view or "(none)", []).append(guess == record.label)
    return {view: (float(np.mean(hits)), len(hits)) for view, hits in sorted(by_view.items())}


def build_report(runs: list[Path], out: Path, tta: bool = False, device: str | Device = "auto") -> Path:
    """Score every run on its own evaluation part (on ``device``) into ``out``/report.md and a self-contained
    report.html; returns the HTML's path."""
    device = resolve_device(device)  # an absent GPU: an error before anything is written
    out.mkdir(parents=True, exist_ok=True)
    rows, sections, images = [], [], []
    for run in runs:
        model = load_model(run, device)
        part = evaluation_part(read_manifest(run))
        name = _model_name(run, model)
        plain, kept, probabilities = evaluate_model(model, part, tta=())
        rows.append((name, plain))
        if tta:
            with_tta, _, _ = evaluate_model(model, part, tta=DEFAULT_TTA)
            rows.append((f"{name} + TTA", with_tta))
            with_tta["tta_cost"] = round(plain["images_per_second"] / with_tta["images_per_second"], 2)
            sections.append(f"**{name}**: test-time augmentation (original + {len(DEFAULT_TTA)} views, each image "
                            f"decoded once) costs {with_tta['tta_cost']}x the time of single-view prediction.")
        sections.append(_details(run, name, plain, probabilities, kept, model))
        if RunFiles(run).curves.is_file():
            images.append((name, RunFiles(run).curves))
        reliability = reliability_plot(run, model.temperature if hasattr(model, "temperature") else 1.0,
                                       out / f"reliability-{len(images)}.png")
        if reliability is not None:
            images.append((f"{name}: out-of-fold reliability and coverage", reliability))
    table = results_table(rows)
    markdown = "# graft report\n\n" + table + "\n" + "\n\n".join(sections) + "\n"
    for name, path in images:
        copy = path if path.parent == out else out / f"curves-{len(list(out.glob('curves-*.png')))}.png"
        if copy != path:
            copy.write_bytes(path.read_bytes())
        markdown += f"\n### Training curves: {name}\n\n![{name}]({copy.name})\n"
    atomic_write_text(out / "report.md", markdown)
    atomic_write_text(out / "report.html", _html(markdown, images))
    return out / "report.html"


def _model_name(run: Path, model) -> str:
    if isinstance(model, Ensemble):
        return f"{run.name}: ensemble of {len(model.members)}"
    kind = "fine-tuned" if RunFiles(run).serves_finetuned() else "head-only"
    return f"{run.name}: {model.backbone.name}, {kind}"


def _details(run, name, results, probabilities, part, model) -> str:
    lines = [f"## {name}", ""]
    saved = read_results(run)
    if "temperature" in saved:
        lines.append(f"Calibration: temperature {saved['temperature']}, ECE {saved['ece_before']:.4f} -> "
                     f"{saved['ece_after']:.4f} on the {saved.get('evaluated_on', '?')} split.")
        lines.append("")
    elif "calibration" in saved:
        lines += [f"Calibration: {saved['calibration']}.", ""]
    lines += ["| reject below | coverage | accuracy of answered |", "|---|---|---|"]
    lines += [f"| {c['threshold']} | {c['coverage']:.3f} | {c['accuracy']:.3f} |" for c in results["coverage"]]
    if "head_selection" in saved:
        lines += ["", head_selection_table(saved["head_selection"])]
    rules, where = (saved["fusion_rules_out_of_fold"], "out of fold") if "fusion_rules_out_of_fold" in saved else (
        saved.get("fusion_rules_on_val"), "validation")
    if rules:
        lines += ["", f"| fusion rule ({where}) | S | Top-1 | Top-5 |", "|---|---|---|---|"]
        lines += [f"| {rule} | {v['S']:.4f} | {v['top1']:.4f} | {v['top5']:.4f} |" for rule, v in rules.items()]
    lines += ["", "| view | image top-1 | images |", "|---|---|---|"]
    lines += [f"| {view} | {acc:.3f} | {n} |" for view, (acc, n) in per_view_accuracy(
        probabilities, part, model.labels).items()]
    lines += ["", "| most confused: true | predicted | observations |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {n} |" for (a, b), n in confused_pairs(
        probabilities, part, model.labels, model.config.predict.fusion)]
    return "\n".join(lines)


def _html(markdown: str, images: list[tuple[str, Path]]) -> str:
    """A minimal Markdown-to-HTML for our own output (headings, tables, paragraphs), with plots inlined."""
    body, table = [], []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if not set("".join(cells)) <= set("-"):
                tag = "th" if not table else "td"
                table.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if table:
            body.append("<table>" + "".join(table) + "</table>")
            table = []
        if line.startswith("!["):
            continue
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.strip():
            body.append(f"<p>{html.escape(line).replace('**', '')}</p>")
    for name, path in images:
        encoded = base64.b64encode(path.read_bytes()).decode()
        body.append(f"<h3>Training curves: {html.escape(name)}</h3><img alt='{html.escape(name)}' "
                    f"src='data:image/png;base64,{encoded}'>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>graft report</title><style>{style}</style>" \
           f"</head><body>{''.join(body)}</body></html>"

"""Reports as text: the console summary and `report.md`, from `evaluate`'s report dict."""

from __future__ import annotations

from utkface.evaluation import age_bins, metrics
from utkface.evaluation.tables import num, pct, points, text_table
from utkface.runtime.names import FAIRNESS_BANDS, RACES


def summary(report: dict) -> str:
    """A compact console summary: headline metrics, the age band table and the gaps."""
    data, age, gender, race = report["data"], report["age"], report["gender"], report["race"]
    lines = [
        f"{report['checkpoint']['path']} ({report['checkpoint']['model']}, "
        f"{'+'.join(report['tasks'])}) on {_describe_data(data)}"
        f"{', flip TTA' if report['settings']['tta'] else ''}, "
        f"{report['timing']['total_s']:.1f} s ({report['timing']['images_per_s']:.0f} img/s)"
    ]
    if age:
        line = (
            f"age     n={age['n']}  MAE {num(age['mae'])}  RMSE {num(age['rmse'])}  "
            f"MedAE {num(age['median_ae'])}  bias {num(age['bias'], signed=True)}  "
            f"CS@5 {pct(age['cs']['5'])}"
        )
        if age["interval"]:
            line += (
                f"  {pct(age['interval']['nominal'], 0)} interval covers "
                f"{pct(age['interval']['coverage'])}"
            )
        lines.append(line)
    if gender:
        lines.append(
            f"gender  n={gender['n']}  acc {pct(gender['accuracy'])}  balanced "
            f"{pct(gender['balanced_accuracy'])}  AUC {num(gender['roc_auc'], 3)}  log-loss "
            f"{num(gender['log_loss'], 3)}  ECE {num(gender['ece'], 3)}"
        )
    if race:
        lines.append(
            f"race    n={race['n']}  acc {pct(race['accuracy'])}  "
            f"({race['n_unknown']} of unknown race left out)"
        )
    lines += text_table(
        ["age band", "n", "MAE", "bias", "gender acc"],
        _group_cells(report["breakdowns"]["age_band"]["rows"]),
        markdown=False,
    )
    if "source" in report["breakdowns"]:
        rows = _group_cells(report["breakdowns"]["source"]["rows"])
        lines += text_table(["source", "n", "MAE", "bias", "gender acc"], rows, markdown=False)
    if report.get("age_bins"):  # faces labelled with an age bin
        lines += age_bins.bin_lines(report["age_bins"], report["breakdowns"], markdown=False)
    lines += _gap_lines(report["breakdowns"])
    if report.get("corruptions"):
        lines += corruption_table(report["corruptions"], markdown=False)
    lines.append(fairness_line(report["fairness"]))
    if report["files"]:
        lines.append(f"report: {report['files'].get('markdown')} in the output folder")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    """The report as Markdown: tables for every block, the plots referenced by file name."""
    data, checkpoint = report["data"], report["checkpoint"]
    shown = report["plots"]
    lines = [
        "# Evaluation report",
        "",
        f"- checkpoint: `{checkpoint['path']}` ({checkpoint['model']}, tasks "
        f"{', '.join(checkpoint['tasks'])}, epoch {checkpoint['epoch']}, "
        f"{checkpoint['preprocess']['size']} px)",
        f"- data: {_describe_data(data)}",
        f"- test-time augmentation: {'horizontal flip' if report['settings']['tta'] else 'none'}",
        "",
    ]
    if report["age"]:
        age = report["age"]
        lines += ["## Age", ""]
        rows = [
            ["MAE", num(age["mae"])],
            ["RMSE", num(age["rmse"])],
            ["median absolute error", num(age["median_ae"])],
            ["bias (predicted - true)", num(age["bias"], signed=True)],
            ["CS@5 (within 5 years)", pct(age["cs"]["5"])],
        ]
        if age["interval"]:
            interval = age["interval"]
            rows.append(
                [
                    f"coverage of the {pct(interval['nominal'], 0)} interval",
                    pct(interval["coverage"]),
                ]
            )
            rows.append(["mean interval width (years)", num(interval["mean_width"], 1)])
        lines += text_table(["metric", f"value (n={age['n']})"], rows) + [""]
        lines += text_table(["k (years)", *age["cs"]], [["CS@k", *map(pct, age["cs"].values())]])
        lines += [""] + _images(shown, ("age_scatter", "age_bands", "cs_curve", "worst_age"))
    if report.get("age_bins"):
        lines += ["## Age bins", ""]
        lines += age_bins.bin_lines(report["age_bins"], report["breakdowns"]) + [""]
    if report["gender"]:
        gender = report["gender"]
        lines += ["## Gender", ""]
        rows = [
            ["accuracy", pct(gender["accuracy"])],
            ["balanced accuracy", pct(gender["balanced_accuracy"])],
            ["ROC-AUC", num(gender["roc_auc"], 4)],
            ["log-loss", num(gender["log_loss"], 4)],
            [f"ECE ({len(gender['reliability'])} bins)", num(gender["ece"], 4)],
        ]
        lines += text_table(["metric", f"value (n={gender['n']})"], rows) + [""]
        lines += _class_table(gender, ["male", "female"]) + [""]
        lines += [f"- note: {note}" for note in gender["notes"]]
        lines += _images(shown, ("gender_confusion", "reliability", "worst_gender"))
    if report["race"]:
        race = report["race"]
        lines += [
            "## Race",
            "",
            f"Accuracy {pct(race['accuracy'])} over n={race['n']} "
            f"images of known race ({race['n_unknown']} unknown left out).",
            "",
        ]
        lines += _class_table(race, list(RACES)) + [""]
        lines += text_table(
            ["true \\ predicted", *RACES],
            [[name, *row] for name, row in zip(RACES, race["confusion"])],
        ) + [""]
    lines += [
        "## Breakdowns",
        "",
        f"Gaps rank groups with at least {metrics.MIN_GROUP_N} images; empty cells are `-`.",
        "",
    ]
    titles = {
        "age_band": "By true age band",
        "gender": "By true gender",
        "race": "By race",
        "race_gender": "By race x gender",
        "source": "By source",
    }
    for by, table in report["breakdowns"].items():
        if by not in titles:  # race_age: the fairness section's own table
            continue
        lines += [f"### {titles[by]}", ""]
        lines += text_table(
            ["group", "n", "MAE", "bias", "gender acc"], _group_cells(table["rows"])
        )
        lines += [""] + [f"- {line}" for line in _gap_lines({by: table}, unranked=True)] + [""]
    if report.get("corruptions"):
        lines += [
            "## Photo conditions (UTKFace-C)",
            "",
            f"The same {report['corruptions']['n']} faces, each condition applied to the "
            "full-resolution crop before resizing (see `corruptions.py`).",
            "",
        ]
        lines += corruption_table(report["corruptions"]) + [""]
    lines += fairness_section(report) + [""]
    lines += _images(shown, ("fairness_bias",))
    skipped = data["skipped"]
    lines += ["## Skipped files", "", f"{skipped['count']} of {data['seen']} files skipped."]
    for reason, count in skipped["by_reason"].items():
        lines.append(f"- {count} x {reason}")
    return "\n".join(lines) + "\n"


def fairness_line(fairness: dict) -> str:
    """One line: the largest |age bias| over race x age band cells and the gender accuracy gap
    between races (both over groups with n >= min_n)."""
    cell, gap = fairness["max_abs_bias_cell"], fairness["gender_gap_races"]
    worst = f" ({cell['group']}, n={cell['n']})" if cell else ""
    races = ""
    if gap:
        races = f" ({gap['best']} {pct(gap['best_value'])}, {gap['worst']} "
        races += f"{pct(gap['worst_value'])})"
    return (
        f"fairness (groups with n >= {fairness['min_n']}): max |age bias| "
        f"{num(fairness['max_abs_bias'])}{worst}, gender accuracy gap between races "
        f"{pct(fairness['gender_gap'])}{races}"
    )


def fairness_section(report: dict) -> list[str]:
    """Markdown: age bias / MAE (n) per race x age band and gender accuracy per race."""
    tables = report["breakdowns"]
    return [
        "## Fairness",
        "",
        "Age bias (mean predicted - true, years) / MAE per race x true age band, and gender "
        "accuracy per race; (n) = images.",
        "",
        *fairness_table(tables["race_age"]["rows"], tables["race"]["rows"]),
        "",
        f"- {fairness_line(report['fairness'])}",
    ]


def fairness_table(cell_rows: list[dict], race_rows: list[dict], markdown=True) -> list[str]:
    """One line per race with images: bias / MAE (n) per age band, then gender accuracy (n);
    `cell_rows` are `metrics.group_table` rows of "race_age", `race_rows` of "race"."""
    cells = {row["group"]: row for row in cell_rows}

    def show(row: dict) -> str:
        n = row.get("age_n", row["n"])  # exact ages only: an age bin has no age error
        if not n:
            return "-"
        return f"{num(row['bias'], signed=True)} / {num(row['mae'])} ({n})"

    rows = [
        [
            race["group"],
            *(show(cells[f"{race['group']}/{band}"]) for band, _, _ in FAIRNESS_BANDS),
            f"{pct(race['gender_accuracy'])} ({race['n']})",
        ]
        for race in race_rows
        if race["n"]
    ]
    header = ["race", *(f"{band}: bias / MAE (n)" for band, _, _ in FAIRNESS_BANDS)]
    return text_table([*header, "gender acc (n)"], rows, markdown=markdown)


# ---------------------------------------------------------------------------------------------
# helpers


def corruption_table(result: dict, markdown: bool = True) -> list[str]:
    """UTKFace-C (`corruptions.robustness`) as table lines: each condition's age MAE and gender
    accuracy with its change from clean, and the mean change over the conditions."""
    rows = [
        [
            row["condition"],
            num(row.get("age_mae")),
            num(row.get("age_mae_increase"), signed=True),
            pct(row.get("gender_acc")),
            points(row.get("gender_acc_change")),
        ]
        for row in result["rows"]
    ]
    rows.append(
        [
            "mean of conditions",
            "",
            num(result.get("mean_age_mae_increase"), signed=True),
            "",
            points(result.get("mean_gender_acc_change")),
        ]
    )
    header = ["condition", "age MAE", "change", "gender acc", "change (points)"]
    return text_table(header, rows, markdown)


def _describe_data(data: dict) -> str:
    where = (
        f"{data['split']} split of {data['source']}"
        if data["mode"] == "prepared"
        else (f"every file of {data['source']}")
    )
    return f"{where}: {data['n_images']} images, {data['skipped']['count']} skipped"


def _group_cells(rows: list[dict]) -> list[list[str]]:
    return [
        [
            row["group"],
            str(row["n"]),
            num(row["mae"]),
            num(row["bias"], signed=True),
            pct(row["gender_accuracy"]),
        ]
        for row in rows
    ]


def _gap_lines(tables: dict, unranked: bool = False) -> list[str]:
    """One line per best-worst gap; with `unranked`, also say where no gap could be ranked."""
    lines = []
    for by, table in tables.items():
        for metric, gap in table["gap"].items():
            label = f"{'MAE' if metric == 'mae' else 'gender accuracy'} gap by {by}"
            if gap is None:
                if unranked:
                    lines.append(
                        f"{label}: not ranked (fewer than two groups with "
                        f"n >= {metrics.MIN_GROUP_N} and a value)"
                    )
                continue
            show = pct if metric == "gender_accuracy" else num
            lines.append(
                f"{label}: {show(gap['gap'])}, best {gap['best']} ({show(gap['best_value'])}, "
                f"n={gap['best_n']}), worst {gap['worst']} ({show(gap['worst_value'])}, "
                f"n={gap['worst_n']})"
            )
    return lines


def _class_table(block: dict, names: list[str]) -> list[str]:
    rows = [
        [
            name,
            str(block["per_class"][name]["n"]),
            *(pct(block["per_class"][name][key]) for key in ("precision", "recall", "f1")),
        ]
        for name in names
    ]
    return text_table(["class", "n", "precision", "recall", "F1"], rows)


def _images(shown: dict, names: tuple[str, ...]) -> list[str]:
    return [f"![{name}]({shown[name]})\n" for name in names if name in shown]

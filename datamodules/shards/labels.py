"""Label CSVs and label maps shared by the file writers (`audio`, `video`): `path,labels` rows, class indices or
names, `index,mid[,display_name]` maps, and the sorted vocabulary written to classes.json."""

from __future__ import annotations

import argparse
import csv
import os

from datamodules.class_names import write_class_names


def read_label_map(path: str | os.PathLike) -> dict[str, int]:
    """`index,mid,display_name` (AudioSet's class_labels_indices.csv) or `index,name` -> {mid or name: index}.
    Both the mid and the display name map to the index, so either may appear in a label CSV."""
    mapping: dict[str, int] = {}
    with open(path, newline="") as f:
        rows = list(csv.reader(f, skipinitialspace=True))
    if not rows:
        raise ValueError(f"label map {path} is empty")
    start = 0 if rows[0][0].strip().isdigit() else 1  # skip a header row
    for line, row in enumerate(rows[start:], start + 1):
        if not row:
            continue
        if len(row) < 2 or not row[0].strip().isdigit():
            raise ValueError(f"label map {path} line {line}: expected 'index,mid[,display_name]', got {row}")
        for name in row[1:]:
            mapping[name.strip()] = int(row[0])
    return mapping


def label_map_names(path: str | os.PathLike) -> list[str]:
    """Class names of a label map, by index: the last column (AudioSet's display_name, or the name)."""
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f, skipinitialspace=True) if r and r[0].strip().isdigit()]
    by_index = {int(r[0]): r[-1].strip() for r in rows}
    return [by_index.get(i, str(i)) for i in range(max(by_index) + 1)] if by_index else []


def parse_labels(text: str, label_map: dict[str, int] | None) -> list[str | int]:
    """ "3,7" -> [3, 7]; names through `label_map`; unknown names stay strings (a vocabulary maps them later)."""
    out: list[str | int] = []
    for part in (p.strip() for p in text.replace(";", ",").split(",")):
        if not part:
            continue
        if label_map is not None:
            if part not in label_map:
                raise ValueError(f"label {part!r} not in the label map (--label-map)")
            out.append(label_map[part])
        else:
            out.append(int(part) if part.lstrip("-").isdigit() else part)
    return out


def index_labels(rows: list[tuple[str, list[str | int]]], out_dir: str) -> list[tuple[str, list[int]]]:
    """Name labels -> indices of a sorted vocabulary, written to out_dir/classes.json (ints pass unchanged)."""
    names = sorted({label for _, labels in rows for label in labels if isinstance(label, str)})
    if not names:
        return [(path, [int(x) for x in labels]) for path, labels in rows]
    if any(isinstance(label, int) for _, labels in rows for label in labels):
        raise ValueError("label CSV mixes class indices and names; pass --label-map")
    write_class_names(out_dir, names)
    vocab = {name: i for i, name in enumerate(names)}
    return [(path, [vocab[str(x)] for x in labels]) for path, labels in rows]


def read_simple_csv(
    csv_path: str | os.PathLike, root: str | os.PathLike, label_map: dict[str, int] | None
) -> list[tuple[str, list[str | int]]]:
    """`path,labels` rows (header required) -> [(absolute path, labels)]."""
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        fields = [x.strip() for x in reader.fieldnames or []]
        if "path" not in fields or not ({"labels", "label"} & set(fields)):
            raise ValueError(f"{csv_path}: expected a header 'path,labels' (or 'path,label'), got {fields}")
        column = "labels" if "labels" in fields else "label"
        rows = []
        for row in reader:
            try:
                rows.append((os.path.join(root, row["path"].strip()), parse_labels(row[column] or "", label_map)))
            except (ValueError, AttributeError) as e:
                raise ValueError(f"{csv_path}, line {reader.line_num}: {e}") from None
        return rows


def add_label_args(
    p: argparse.ArgumentParser,
    *,
    root_help: str,
    labels_help: str,
    label_map_help: str,
    labels_required: bool = False,
    csv_formats: tuple[str, ...] = (),
) -> None:
    """A file writer's ROOT and label-CSV options, in this order: ROOT, --labels, --csv-format, --label-map.

    Args:
        p: the writer's subparser.
        root_help, labels_help, label_map_help: the help texts of ROOT, --labels and --label-map.
        labels_required: --labels must be given (else it defaults to None).
        csv_formats: the --csv-format choices, the first being the default; empty: no --csv-format option.
    """
    p.add_argument("root", help=root_help)
    p.add_argument("--labels", required=labels_required, default=None, help=labels_help)
    if csv_formats:
        p.add_argument("--csv-format", default=csv_formats[0], choices=csv_formats)
    p.add_argument("--label-map", default=None, help=label_map_help)

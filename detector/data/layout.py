"""What a dataset folder looks like: the annotation formats whose files it holds.

A quick look at names (and at the first megabyte of JSON files), for messages such as the
shapes generator's refusal of a folder it did not make.
"""

from __future__ import annotations

from pathlib import Path

# How deep to look for annotation files below the root (root/<split>/<folder>/file).
DEPTH = 3
SHOWN = 3  # example names in a message
HEAD = 1 << 20  # bytes of a JSON file searched for COCO's "images" key (it comes before the annotations)


def sniff(root: str | Path) -> list[tuple[str, str]]:
    """(format, evidence) for each format whose files ``root`` holds: ``coco`` (JSON files with
    an "images" list), ``voc`` (XML files), ``yolo`` (a labels folder of .txt files, or a data.yaml)."""
    root = Path(root)
    files = [p for p in _walk(root, DEPTH) if p.is_file()]
    found = []
    jsons = [p for p in files if p.suffix.lower() == ".json" and _has_images_key(p)]
    if jsons:
        found.append(("coco", f"has {_names(jsons, root)}"))
    xmls = [p for p in files if p.suffix.lower() == ".xml"]
    if xmls:
        found.append(("voc", f"has {len(xmls)} XML file{'s' if len(xmls) > 1 else ''} ({_names(xmls, root)})"))
    labels = [p for p in files if p.suffix.lower() == ".txt" and "labels" in p.relative_to(root).parts[:-1]]
    yamls = [p for p in files if p.name.lower() in ("data.yaml", "data.yml")]
    if labels or yamls:
        found.append(("yolo", f"has {_names(yamls + labels, root)}"))
    return found


def folder_hint(root: str | Path) -> str:
    """One phrase on what ``root`` holds and the option that reads it, e.g. "it has
    annotations/instances_train.json: a COCO dataset? add --data coco"."""
    root = Path(root)
    if not root.is_dir():
        return "it is a file, not a folder"
    found = sniff(root)
    readable = [(fmt, evidence) for fmt, evidence in found if fmt in ("coco", "voc")]
    if readable:
        return "; ".join(f"it {evidence}: a {fmt.upper()} dataset? add --data {fmt}" for fmt, evidence in readable)
    if found:
        return f"it {found[0][1]}: YOLO-format labels, which this version does not read"
    entries = sorted(p.name for p in root.iterdir())
    return (f"it holds {len(entries)} entr{'ies' if len(entries) > 1 else 'y'} ({', '.join(entries[:SHOWN])}"
            f"{', ...' if len(entries) > SHOWN else ''}); give a new or empty folder as --data-root for the "
            f"generated data, or the dataset's format with --data coco or --data voc")


def _has_images_key(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return b'"images"' in handle.read(HEAD)
    except OSError:
        return False


def _walk(folder: Path, depth: int):
    for entry in sorted(folder.iterdir()):
        yield entry
        if depth > 1 and entry.is_dir() and not entry.name.startswith("."):
            yield from _walk(entry, depth - 1)


def _names(paths: list[Path], root: Path) -> str:
    names = [str(p.relative_to(root)) for p in paths[:SHOWN]]
    return ", ".join(names) + (", ..." if len(paths) > SHOWN else "")

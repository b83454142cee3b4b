"""Captions for class-labelled shards: `KEY.jpg` + `KEY.cls` (an integer class index as text), as
ImageNet-style webdataset sets are stored, train and evaluate as they are, with no conversion step.

A sample with no caption of its own (no KEY.txt, no KEY.json "caption"/"captions") but a KEY.cls
gets `template` filled with the name of its class: with the default template and class 3 named
"goldfish", "a photo of a goldfish". The names come from a file given once (`DataConfig.class_names`,
`--class-names` of the eval runner): one name per line, line 1 naming class 0; or a `.json` file
holding a list of names. A caption of the sample's own always wins over its class.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from . import skips

logger = logging.getLogger("data")

CLASS_CAPTION_TEMPLATE = "a photo of a {name}"  # CLIP's zero-shot prompt (Radford et al. 2021, §3.1.4)
CLASS_SUFFIX = "cls"  # webdataset's name for an integer class label
_INTEGER = re.compile(r"-?[0-9]+")
_warned_unconfigured = False  # the "set data.class_names" warning is logged once per process


@dataclass(frozen=True)
class ClassCaptions:
    """Class names and the caption template that turns a class index into a caption."""

    names: tuple[str, ...]
    template: str = CLASS_CAPTION_TEMPLATE
    source: str = ""  # the file the names came from, for messages

    def caption(self, index: int) -> str:
        return self.template.format(name=self.names[index])


def check_template(template: str, field: str) -> None:
    """Raise ValueError unless `template` is a str.format pattern with `{name}` and no other field."""
    try:
        filled = template.format(name="\0")
    except (KeyError, IndexError, ValueError) as exn:
        raise ValueError(f"{field}={template!r} must be a format string whose only field is {{name}} "
                         f"({type(exn).__name__}: {exn})") from None
    if "\0" not in filled:
        raise ValueError(f"{field}={template!r} must contain {{name}}, where the class name goes")


def load_class_names(path: str | Path) -> tuple[str, ...]:
    """The class names of `path`: a text file with one name per line (line 1 names class 0), or a
    `.json` file holding a list of names. Raises ValueError naming the file (and line or item) when
    it is missing, empty, or has a blank name."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"class names file not found: {path} (data.class_names / --class-names)")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exn:
        raise ValueError(f"class names file {path} is not UTF-8 text: {exn}") from None
    if path.suffix.lower() == ".json":
        try:
            names = json.loads(text)
        except ValueError as exn:
            raise ValueError(f"class names file {path} is not valid JSON: {exn}") from None
        if not isinstance(names, list):
            raise ValueError(f"class names file {path} must hold a JSON list of names, got {type(names).__name__}")
        for i, name in enumerate(names):
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"class names file {path}: item {i} (class {i}) is {name!r}; every class needs "
                                 "a non-blank name")
        names = [name.strip() for name in names]
    else:
        names = [line.strip() for line in text.splitlines()]
        for i, name in enumerate(names):
            if not name:
                raise ValueError(f"class names file {path}: line {i + 1} (class {i}) is blank; every class needs "
                                 "a name, one per line, with no blank lines")
    if not names:
        raise ValueError(f"class names file {path} is empty; it needs one class name per line")
    return tuple(names)


def load_class_captions(path: str | Path | None, template: str = CLASS_CAPTION_TEMPLATE) -> ClassCaptions | None:
    """`ClassCaptions` from a names file (`load_class_names`), or None without one."""
    if path is None:
        return None
    check_template(template, "class_caption_template")
    return ClassCaptions(load_class_names(path), template, str(path))


def class_caption(raw: dict, classes: ClassCaptions | None, counter: skips.SkipCounter, where: str) -> str | None:
    """The caption of a raw sample from its KEY.cls, or None after counting why there is none:
    missing_class_names (no names were configured; also a warning, once per process, saying to set
    data.class_names), bad_class (not an integer) or class_out_of_range (no such line in the names)."""
    global _warned_unconfigured
    if classes is None:
        if not _warned_unconfigured:
            _warned_unconfigured = True
            logger.warning("data: %s has a class index (KEY.cls) and no caption; set data.class_names "
                           "(--class-names for the eval runner) to a file with one class name per line to caption "
                           "such samples from their class. Until then they are skipped as %s.", where,
                           skips.MISSING_CLASS_NAMES)
        counter.skip(skips.MISSING_CLASS_NAMES, f"{where} has KEY.cls but no caption: set data.class_names")
        return None
    text = raw[CLASS_SUFFIX].decode("utf-8", errors="replace").strip()
    if not _INTEGER.fullmatch(text):
        counter.skip(skips.BAD_CLASS, f"{where}: KEY.cls {text[:40]!r} is not an integer class index")
        return None
    index = int(text)
    if not 0 <= index < len(classes.names):
        counter.skip(skips.CLASS_OUT_OF_RANGE, f"{where}: class {index}, but {classes.source or 'the class names'} "
                                               f"names classes 0..{len(classes.names) - 1}")
        return None
    return classes.caption(index)

"""Cross-references resolve: every "docs/parity.md §<number>" or "docs/parity.md#<anchor>" in the project names
a section of docs/parity.md, and relative markdown links in README.md and docs/*.md point to existing files
(and anchors). Text only: no jax."""
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARITY = os.path.join(ROOT, "docs", "parity.md")
SECTION_REF = re.compile(r"docs/parity\.md\s*§\s*(\d+(?:\.\d+)?)")
ANCHOR_REF = re.compile(r"docs/parity\.md#([\w-]+)")
LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
ANCHOR = re.compile(r"<a id=\"([\w-]+)\"></a>")
OLD_CITATION = re.compile(r"\bSP" r"EC\b")  # split so that this file does not cite it


def _read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def _project_files():
  """The project's .py and .md files (no virtualenvs, build outputs or hidden folders)."""
  for folder, dirs, files in os.walk(ROOT):
    dirs[:] = [d for d in dirs if not d.startswith(".") and not d.endswith(".egg-info") and d != "__pycache__"]
    for name in files:
      if name.endswith((".py", ".md")):
        yield os.path.join(folder, name)


def _without_code_blocks(text):
  return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def _slug(heading):
  """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
  text = re.sub(r"<[^>]+>", "", heading).strip().lower()
  return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _headings(path):
  """[(title, section number or None, explicit <a id> anchors just before it)] of a markdown file."""
  headings, pending = [], []
  for line in _without_code_blocks(_read(path)).splitlines():
    pending += ANCHOR.findall(line)
    heading = HEADING.match(line)
    if heading:
      number = re.match(r"(\d+(?:\.\d+)?)\.?\s", heading.group(2))
      headings.append((heading.group(2), number.group(1) if number else None, pending))
      pending = []
  return headings


def _anchors(path):
  """{anchor: section number or None} of a markdown file: GitHub's heading anchors and the explicit
  <a id> anchors, each numbered by its heading."""
  anchors, seen = {}, {}
  for title, number, explicit in _headings(path):
    slug = _slug(title)
    count = seen.get(slug, 0)
    seen[slug] = count + 1
    anchors[slug if count == 0 else f"{slug}-{count}"] = number
    anchors.update(dict.fromkeys(explicit, number))
  return anchors


def _sections():
  return {number for _, number, _ in _headings(PARITY) if number}


def test_parity_sections_are_numbered_in_order():
  numbers = [number for _, number, _ in _headings(PARITY) if number]
  tops = [int(n) for n in dict.fromkeys(n.split(".")[0] for n in numbers)]
  assert tops == list(range(1, len(tops) + 1))
  for top in tops:
    subs = [int(n.split(".")[1]) for n in numbers if n.startswith(f"{top}.")]
    assert subs == list(range(1, len(subs) + 1)), f"§{top}"


def test_every_parity_reference_names_a_section():
  sections, anchors = _sections(), _anchors(PARITY)
  found, bad = 0, []
  for path in _project_files():
    text = _read(path)
    rel = os.path.relpath(path, ROOT)
    for number in SECTION_REF.findall(text):
      found += 1
      if number not in sections:
        bad.append(f"{rel}: §{number}")
    for anchor in ANCHOR_REF.findall(text):
      found += 1
      if anchor not in anchors:
        bad.append(f"{rel}: #{anchor}")
    for label, target in LINK.findall(text):  # a link's "§N.M" and its anchor name the same section
      cited = re.search(r"§\s*(\d+(?:\.\d+)?)", label)
      if cited and target.endswith(tuple(f"parity.md#{a}" for a in anchors)):
        section = anchors[target.rsplit("#", 1)[1]] or ""
        if not (cited.group(1) + ".").startswith(section + "."):
          bad.append(f"{rel}: [{label}]({target}) is in §{section}")
  assert found > 10  # the README, the configs and the code cite it
  assert not bad


def test_internal_section_references_exist():
  sections = _sections()
  cited = set(re.findall(r"§\s*(\d+(?:\.\d+)?)", _read(PARITY)))
  assert cited and cited <= sections, sorted(cited - sections)


def test_no_citation_of_the_internal_spec():
  """Users do not have that document: cite docs/parity.md instead."""
  here = os.path.abspath(__file__)
  bad = [f"{os.path.relpath(path, ROOT)}:{i}" for path in _project_files() if path != here
         for i, line in enumerate(_read(path).splitlines(), 1) if OLD_CITATION.search(line)]
  assert not bad


@pytest.mark.parametrize("doc", ["README.md"] + sorted(os.path.relpath(p, ROOT)
                                                      for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))))
def test_relative_links_resolve(doc):
  path = os.path.join(ROOT, doc)
  bad = []
  for _, target in LINK.findall(_without_code_blocks(_read(path))):
    if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
      continue
    file_part, _, anchor = target.partition("#")
    linked = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
    if not os.path.exists(linked) or (anchor and linked.endswith(".md") and anchor not in _anchors(linked)):
      bad.append(target)
  assert not bad

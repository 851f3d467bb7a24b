"""The dashboard's files ship in the package and reference nothing outside it."""

from __future__ import annotations

import re

from kofo.node.dashboard import STATIC_DIR

_REF = re.compile(r"""(?:src|href)="([^"#]+)"|from\s+"(\.[^"]+)"|import\s*\(\s*"(\.[^"]+)"\s*\)""")


def test_every_file_the_page_references_is_in_the_package():
    missing, seen = [], 0
    for name in ("index.html", *(p.name for p in STATIC_DIR.glob("*.js"))):
        for groups in _REF.findall((STATIC_DIR / name).read_text()):
            ref = next(g for g in groups if g)
            seen += 1
            if ref.startswith("#"):
                continue
            if not (STATIC_DIR / ref.removeprefix("./")).is_file():
                missing.append(f"{name} -> {ref}")
    assert missing == []
    assert seen >= 6  # index.html's script, style and icon; app.js's three modules
    assert (STATIC_DIR / "index.html").is_file()


def test_no_asset_loads_anything_from_another_origin():
    # The one absolute URL allowed is the SVG namespace (an identifier, never fetched).
    for path in STATIC_DIR.iterdir():
        body = path.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", body, re.I), path.name
        assert "@import" not in body and "url(http" not in body, path.name

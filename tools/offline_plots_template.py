"""Write .dvc/plots/offline.html: the page template of `dvc plots show`, with vega inlined.

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so with no network its data
plots stay blank (its image plots show either way). This template carries the exact versions
DVC's renderer asks for (see dvc_render.vega.VegaRenderer.SCRIPTS), so the page works offline.
.dvc/config points `plots.html_template` at it.

Run it again after upgrading dvc: `python tools/offline_plots_template.py` (needs npm, which
fetches the three packages from the npm registry; the written file is committed).
"""

from __future__ import annotations

import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / ".dvc" / "plots" / "offline.html"
PACKAGES = {"vega": "build/vega.min.js", "vega-lite": "build/vega-lite.min.js", "vega-embed": "build/vega-embed.min.js"}


def dvc_versions() -> dict[str, str]:
    """The versions DVC's renderer loads from its CDN."""
    from dvc_render.vega import VegaRenderer

    found = dict(re.findall(r"npm/(vega(?:-lite|-embed)?)@([\d.]+)", VegaRenderer.SCRIPTS))
    if set(found) != set(PACKAGES):
        raise SystemExit(f"unexpected scripts in dvc_render: {VegaRenderer.SCRIPTS}")
    return found


def fetch(name: str, version: str, folder: Path) -> tuple[str, str]:
    """(the minified build, its licence) of one npm package."""
    subprocess.run(["npm", "pack", f"{name}@{version}", "--silent"], cwd=folder, check=True, capture_output=True)
    with tarfile.open(next(folder.glob(f"{name}-{version}.tgz"))) as tar:
        script = tar.extractfile(f"package/{PACKAGES[name]}").read().decode("utf-8")
        licence = tar.extractfile("package/LICENSE").read().decode("utf-8")
    return script, licence


def main() -> None:
    versions = dvc_versions()
    scripts = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, version in versions.items():
            script, licence = fetch(name, version, Path(tmp))
            if "</script" in script.lower():
                raise SystemExit(f"{name}: the build contains '</script', which would end the inline script")
            scripts.append(f"<!-- {name}@{version} (npm), its licence:\n{licence.replace('--', '- -')}\n-->\n"
                           f"<script type=\"text/javascript\">{script}</script>")
    page = ("<!DOCTYPE html>\n<html>\n<head>\n    {refresh_tag}\n    <meta charset=\"utf-8\">\n    <title>DVC Plot</title>\n"
            "<!-- written by tools/offline_plots_template.py: vega inlined, so that the page needs no network -->\n"
            + "\n".join(scripts)
            + "\n    <style>\n        table {\n            border-spacing: 15px;\n        }\n    </style>\n</head>\n<body>\n"
              "    {plot_divs}\n</body>\n</html>\n")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(page, encoding="utf-8")
    print(f"{OUT.relative_to(ROOT)}: {len(page) / 1e6:.2f} MB, {', '.join(f'{n}@{v}' for n, v in versions.items())}")


if __name__ == "__main__":
    main()

"""Write README.md from nbs/index.ipynb (Quarto, which `nbdev-readme` needs, is not always installed)

Markdown cells are copied as they are, code cells become ```python blocks and their text
outputs plain blocks. `--check` only reports whether README.md is in step with the notebook.
"""
import json
import sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]

def cell_text(cell): return "".join(cell["source"]).strip()

def output_text(output):
    "The plain text of one cell output, or '' for pictures and widgets"
    if output.get("output_type") == "stream": return "".join(output["text"])
    return "".join(output.get("data", {}).get("text/plain", ""))

def render(notebook):
    "The README's text for the parsed `notebook`"
    parts = []
    for cell in notebook["cells"]:
        text = cell_text(cell)
        if not text or text.startswith("#| hide"): continue
        if cell["cell_type"] == "markdown": parts.append(text)
        elif cell["cell_type"] == "code":
            parts.append(f"```python\n{text}\n```")
            outputs = "".join(output_text(o) for o in cell.get("outputs", [])).strip()
            if outputs: parts.append(f"```\n{outputs}\n```")
    return "\n\n".join(parts) + "\n"

if __name__ == "__main__":
    text = render(json.loads((root/"nbs"/"index.ipynb").read_text()))
    readme = root/"README.md"
    if "--check" in sys.argv:
        if readme.exists() and readme.read_text() == text: sys.exit(0)
        sys.exit("README.md is not in step with nbs/index.ipynb: run `python tools/readme.py` and commit")
    readme.write_text(text)

"""The paper's numbers live in docs/paper_numbers.yaml; docs/paper.md describes them in words.
Each number of the data file must appear in the description, so the two cannot drift apart."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _leaves(tree) -> list[float]:
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in _leaves(v)]
    if isinstance(tree, list):
        return [x for v in tree for x in _leaves(v)]
    return [] if tree is None else [float(tree)]


def test_every_paper_number_in_the_data_file_is_in_the_paper_description():
    numbers = yaml.safe_load((ROOT / "docs" / "paper_numbers.yaml").read_text())
    text = (ROOT / "docs" / "paper.md").read_text()
    number = r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?:e-?\d+)?"  # not the "-94" of "92-94"
    stated = {float(m.replace(",", "")) for m in re.findall(number, text)}
    missing = [x for x in _leaves(numbers) if x not in stated]
    assert not missing, f"in docs/paper_numbers.yaml but not in docs/paper.md: {missing}"
    assert len(_leaves(numbers)) >= 20  # the theorem, ablation, benchmark and dynamics are all there


def test_the_notebooks_read_the_papers_numbers_instead_of_typing_them():
    for name in ("01_verify_theorem", "02_ablation", "03_benchmark", "04_dynamics"):
        assert "paper_numbers()" in (ROOT / "notebooks" / f"{name}.py").read_text(), name
    typed_forms = (
        "93.43",
        "90.26",
        "0.38",
        "4.47e-8",
        "4.47e-08",
        "2.79e-9",
        "2.79e-09",
        "1875",
        "1,875",
        "50,240",
        "50240",
        "101,200",
        "101200",
        "32.2",
    )
    sources = [*(ROOT / "notebooks").glob("*.py"), ROOT / "scripts" / "update_readme.py"]
    for path in sources:  # their code lines (Markdown and comments may quote the paper)
        code = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
        found = [(form, line.strip()) for line in code for form in typed_forms if form in line]
        assert not found, (path.name, found[:3])

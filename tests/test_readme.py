"""The README is a front door: short, exactly the two set-up commands that CI runs, links that
resolve, and figures that equal the results files under docs/results/ written by the commands it
names. docs/results.md, where the tables moved, is held to the same files."""
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "docs" / "results"
DOCS = [README, ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)


def _flat(text):
    """Whitespace folded, so a command wrapped over two lines still matches."""
    return " ".join(text.split())


def _pct(x):
    return f"{100 * x:.1f} %"


def _summary(name):
    return json.loads((RESULTS / name / "summary.json").read_text())


def _arms(summary):
    return {a["arm"]: a for a in summary["arms"]}


def test_readme_is_short_with_exactly_the_two_set_up_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    blocks = FENCE.findall(text)
    commands = [body for lang, body in blocks if lang == "bash"]  # the Python example is no set-up command
    assert len(commands) == 2 and [lang for lang, _ in blocks if lang != "bash"] == ["python"]
    app, tests = (body.strip() for body in commands)
    assert app.endswith(".venv/bin/streamlit run app.py")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests == ci[ci.index("# The README's test command, verbatim:") + 1].strip()
    assert 'python -m pytest -m "not slow and not browser"' in text


def _slug(heading):
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_and_images_resolve():
    bad = []
    for doc in DOCS:
        text = FENCE.sub("", doc.read_text())
        for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                bad.append(f"{doc.relative_to(ROOT)}: {target}")
            elif anchor and dest.suffix == ".md":
                heads = re.findall(r"^#+ (.*)$", FENCE.sub("", dest.read_text()), re.M)
                if anchor not in {_slug(h) for h in heads}:
                    bad.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not bad


def test_readme_study_figures_equal_the_summaries_and_name_their_commands():
    text = _flat(README.read_text())
    demo, arith = _summary("study_demo"), _summary("study_arith")
    for summary, folder in ((demo, "study_demo"), (arith, "study_arith")):
        assert f"`{summary['provenance']['command']}`" in text
        assert f"docs/results/{folder}/" in text
    compare = json.loads((RESULTS / "compare_facts.json").read_text())
    assert f"`{compare['provenance']['command']}`" in text
    assert "docs/results/study_demo/bars.png" in text

    arms = _arms(demo)
    quoted = {_pct(arms[a]["mean"]) for a in ("pkt", "vanilla", "untuned", "teacher")}
    assert all(p in text for p in quoted)
    # every percentage the README states is one of the figures above
    assert set(re.findall(r"\d+\.\d %", text)) <= quoted
    # the verdicts it states are those of the corrected analysis (verdicts.json), with their numbers
    verdicts = json.loads((RESULTS / "study_demo" / "verdicts.json").read_text())
    assert f"`{verdicts['provenance']['command']}`" in text
    rows = {(c["family"], c["arm"]): c for c in verdicts["comparisons"]}
    for arm in ("pkt", "pkt-random-teacher"):
        row = rows[("primary", arm)]
        assert row["verdict"] == "inconclusive" and f"{100 * row['diff']:+.1f} points" in text
        assert f"{100 * row['mde80']:.1f}" in text and f"adjusted p = {row['p_adjusted']:.3f}" in text
    pkt = rows[("primary", "pkt")]
    assert "95 % CI [{:+.1f}, {:+.1f}]".format(*(100 * x for x in pkt["ci95"])) in text
    worse = [c for c in verdicts["comparisons"] if c["verdict"] == "worse"]
    assert worse and all(f"({100 * c['diff']:.1f}" in text or f"{100 * c['diff']:.1f})" in text
                         or f"({100 * c['diff']:.1f} points" in text for c in worse)
    assert not any(c["verdict"] in ("better", "equivalent") for c in verdicts["comparisons"])
    arith_verdicts = json.loads((RESULTS / "study_arith" / "verdicts.json").read_text())["comparisons"]
    assert {c["verdict"] for c in arith_verdicts} == {"inconclusive"}
    low, high = (100 * f(c["mde80"] for c in arith_verdicts) for f in (min, max))
    assert f"{low:.1f} to {high:.1f} points" in text
    assert f"{len(demo['recipe']['seeds'])} seeds" in text and f"{len(arith['recipe']['seeds'])} seeds" in text


def test_results_page_tables_equal_the_results_files():
    text = (ROOT / "docs" / "results.md").read_text()
    demo = json.loads((RESULTS / "demo_pair.json").read_text())
    for task in ("arith", "facts", "instruct"):
        row = next(line for line in text.splitlines() if line.startswith(f"| `{task}` "))
        teacher = demo["models"]["demo:teacher"][task]["accuracy"]
        student = demo["models"]["demo:student"][task]["accuracy"]
        assert f"**{_pct(teacher)}** | {_pct(student)} |" in row
    assert "python -m paraknow.report demo" in text

    facts = json.loads((RESULTS / "compare_facts.json").read_text())
    for name, label in (("vanilla", "vanilla LoRA"), ("pissa", "PiSSA"), ("pkt", "PKT (default export)")):
        acc = facts["methods"][name]["accuracy"]
        row = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
        assert f"| {100 * acc['mean']:.1f} % ± {100 * acc['std']:.1f} |" in row
        lo, hi = acc["ci95"]
        assert f"[{100 * lo:.1f}, {100 * hi:.1f}]" in row
    assert facts["provenance"]["command"] in text

    table = (RESULTS / "study_demo" / "table.md").read_text()
    for arm in _arms(_summary("study_demo")).values():
        if arm["n"] > 1:
            assert f"| `{arm['arm']}` | {arm['n']} | {_pct(arm['mean'])} |" in table
    for name in ("pkt", "vanilla", "pissa", "pkt-random-teacher", "pkt-additive"):
        arm = _arms(_summary("study_demo"))[name]
        lo, hi = arm["ci95"]
        assert f"{_pct(arm['mean'])}" in text and f"[{100 * lo:.1f}, {100 * hi:.1f}]" in text

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


def _comparison_row(c):
    """The README's table row for one declared comparison of the shipped study (its summary.json)."""
    def points(x):
        return f"{100 * x:+.1f}"

    def interval(pair):
        return "-" if not pair else f"[{points(pair[0])}, {points(pair[1])}]"
    mde = "-" if c["mde80"] is None else f"{100 * c['mde80']:.1f}"
    return (f"| `{c['arm']}` vs `{c['reference']}` | {c['family']} | {c['n']} | {points(c['diff'])} | "
            f"{interval(c['ci95_adjusted'])} | {interval(c['bootstrap_ci95'])} | {mde} | **{c['verdict']}** |")


def test_readme_study_section_states_the_corrected_verdicts_of_the_shipped_study():
    """Every declared comparison of the shipped paradigm study on `instruct` as summary.json has it
    (difference, adjusted and bootstrap intervals, MDE, verdict), reanalyse's verdicts.json agreeing;
    only the two studies' arm accuracies quoted; a verdict word in bold only where the analysis gave it;
    `facts` stated as its verdicts and MDE range; the commands named."""
    raw = README.read_text()
    text = _flat(raw)
    summary = _summary("study_paradigms_instruct")
    facts = _summary("study_paradigms_facts")
    # `facts` likewise: the command the README names, with the other task
    assert facts["provenance"]["command"] == summary["provenance"]["command"].replace("instruct", "facts")
    verdicts = json.loads((RESULTS / "study_paradigms_instruct" / "verdicts.json").read_text())
    assert f"`{summary['provenance']['command']}`" in text and f"`{verdicts['provenance']['command']}`" in text
    assert "docs/results/study_paradigms_instruct/cost.png" in text
    for comparison in summary["comparisons"]:
        assert _comparison_row(comparison) in raw, comparison["arm"]
    assert [(c["arm"], c["reference"], c["verdict"]) for c in verdicts["comparisons"]] == \
        [(c["arm"], c["reference"], c["verdict"]) for c in summary["comparisons"]]
    section = text.split("## What the shipped study found", 1)[1].split("## Documentation", 1)[0]
    quoted = {_pct(a["mean"]) for a in summary["arms"] + facts["arms"]}
    assert set(re.findall(r"\d+\.\d %", section)) <= quoted
    assert f"{len(summary['recipe']['seeds'])} seeds" in section
    assert len(facts["recipe"]["seeds"]) == len(summary["recipe"]["seeds"])
    found = {c["verdict"] for c in summary["comparisons"]}
    for word in ("better", "worse", "equivalent", "inconclusive"):
        assert (f"**{word}**" in section) == (word in found), word
    assert all(set(s["cell_commits"]) and "unrecorded" not in s["cell_commits"] for s in (summary, facts))
    assert {c["verdict"] for c in facts["comparisons"]} == {"inconclusive"}
    low, high = (100 * f(c["mde80"] for c in facts["comparisons"]) for f in (min, max))
    assert (f"all {len(facts['comparisons'])} comparisons are inconclusive (MDE {low:.1f} to {high:.1f} points)"
            in section)


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


def _command(figures, data_name):
    """A bench's recorded command with its --data path cut to the file name the docs use."""
    command = figures["provenance"]["command"]
    return command.replace(figures["data"], data_name)


def test_readme_real_pair_figures_equal_their_files():
    """The real pair's line: the 32-seed `extract` steps (minutes, peak, step-0 change) and the untuned
    pair's GSM8K accuracy with lm-eval's reading of the student, each with the command that wrote it."""
    text = _flat(README.read_text())
    seeds = json.loads((RESULTS / "real_pair_32.json").read_text())
    minutes = sum(step["seconds"] for step in seeds["steps"].values()) / 60
    step0 = seeds["step0_check"]
    assert f"`{_command(seeds, 'GSM8K-seeds.jsonl')}`" in text
    assert (f"{minutes:.1f} minutes on this 2-core CPU, peak {seeds['peak_rss_gib']:.1f} GiB" in text
            and f"({step0['max_change'] / step0['max_logit']:.1e} relative)".replace("e-0", "e-") in text)
    student_file = json.loads((RESULTS / "real_pair_gsm8k.json").read_text())
    teacher_file = json.loads((RESULTS / "real_pair_gsm8k_teacher.json").read_text())
    student, teacher = student_file["models"]["student"], teacher_file["models"]["teacher"]
    for entry in (student, teacher):
        assert entry["paraknow"]["n"] == 200
    assert f"`{_command(student_file, 'test_1319.jsonl')}`" in text
    assert f"`{_command(teacher_file, 'test_1319.jsonl')}`" in text

    def correct(entry):
        return sum(p["correct"] for p in entry["paraknow"]["predictions"])

    assert (f"the student answers {correct(student)} of the first 200 GSM8K test items and the teacher "
            f"{correct(teacher)}" in text)
    check = student["cross_check"]
    assert check["same_generation"] == 1.0 and check["n"] == 200
    lm_eval = round(student["lm_eval"]["accuracy"]["flexible-extract"] * 200)
    assert f"lm-evaluation-harness scores the student's same generations {lm_eval} of 200" in text
    assert f"the {len(check['verdicts_differ'])} apart" in text

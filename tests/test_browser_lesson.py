"""Page 9 (Lesson) in a real browser: `streamlit run app.py` + Playwright on Debian's Chromium.

Walks the whole lesson on the demo pair with an empty cache of its own (the fine-tuning runs as a
real background job), answering both "predict first" questions, and checks that every "what to
notice" note matches the numbers on the same screen AND numbers this test computes itself from
the files the app wrote: the teacher's weights, the cached sensitivity map, the export's
selection, the run's metrics.jsonl, and a plain transformers + PEFT forward pass. Screenshots of
one step in normal and presentation mode go where tests/test_browser.py puts them (a temporary
folder, or docs/screenshots/ with PARAKNOW_SCREENSHOTS=1). Skips when Chromium, Playwright or the
demo pair is missing. Every wait is for a condition, never a fixed sleep.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from test_browser import CHROMIUM, _no_errors, _settle, _shot, streamlit_app
from test_browser_finetune import _stop_leftover_runs

from paraknow.extract import STRUCTURE_HELP

pytestmark = pytest.mark.browser  # a real browser: run with -m browser, left out of the fast lane

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "paraknow" / "demo_models"
TIMEOUT_MS = 600_000  # the fine-tuning run shares two busy cores with the server and the browser
ROLES = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
         "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
TABLE_JS = """el => { const head = [...el.querySelectorAll('thead th')].map(x => x.innerText.trim());
  return [...el.querySelectorAll('tbody tr')].map(tr => Object.fromEntries(
    [...tr.querySelectorAll('td')].map((td, i) => [head[i], td.innerText.trim()]))); }"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not (DEMO / "teacher" / "model.safetensors").is_file():
        pytest.skip("the demo pair is missing (python -m paraknow.demo builds it)")
    cache = tmp_path_factory.mktemp("lesson-browser-cache")
    env = {k: v for k, v in os.environ.items() if k not in ("PARAKNOW_APP_TEACHER", "PARAKNOW_APP_STUDENT")}
    env.update(PARAKNOW_CACHE=str(cache), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    env.setdefault("OMP_NUM_THREADS", "1")
    try:
        with streamlit_app(env) as url:
            yield url, cache
    finally:
        _stop_leftover_runs(cache)


# ---- reading the files the app wrote, without paraknow ------------------------------------


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k).float() for k in fh.keys()}


def _group(name: str) -> str:
    if ".self_attn." in name:
        return "attention"
    if ".mlp." in name:
        return "FFN"
    if "embed_tokens" in name or "lm_head" in name:
        return "embeddings"
    return "norms"


def _moved_matrices(teacher: dict, student: dict, chosen: list[int]) -> list[tuple[str, torch.Tensor, tuple]]:
    """(teacher parameter, oriented teacher sensitivity-or-weight key, student shape) of every moved matrix."""
    out = []
    for j, t in enumerate(chosen):
        for role, part in ROLES.items():
            name = f"model.layers.{t}.{part}.{role}.weight"
            out.append((name, False, tuple(student[f"model.layers.{j}.{part}.{role}.weight"].shape)))
    out.append(("model.embed_tokens.weight", True, tuple(student["model.embed_tokens.weight"].T.shape)))
    out.append(("lm_head.weight", False, tuple(student["lm_head.weight"].shape)))
    return out


def _best_block(s: torch.Tensor, n: int, m: int) -> float:
    """Largest sum of a contiguous n x m block, by 2-D prefix sums over every position."""
    p = torch.zeros(s.shape[0] + 1, s.shape[1] + 1, dtype=torch.float64)
    p[1:, 1:] = s.double().cumsum(0).cumsum(1)
    sums = p[n:, m:] - p[:-n, m:] - p[n:, :-m] + p[:-n, :-m]  # [o - n + 1, i - m + 1]
    return float(sums.max())


# ---- reading the page --------------------------------------------------------------------


def _note(page) -> str:
    text = page.locator(".st-key-lesson-note [data-testid=stMarkdownContainer]").inner_text().strip()
    assert text.startswith("What to notice."), text
    return text[len("What to notice."):].strip()


def _table(page) -> list[dict]:
    return page.locator(".st-key-lesson-table table").evaluate(TABLE_JS)


def _pct(text: str) -> float:
    return float(text.replace("%", "").strip())


def _close(shown: str, value: float, digits: int = 1) -> bool:
    """A number printed with `digits` decimals equals `value` up to its rounding."""
    return abs(float(shown) - value) <= 0.5 * 10 ** -digits + 1e-9


def _run(page, step: int, title: str, button: str = "Run this step", predict: str | None = None) -> str:
    """Open step `step` with Next (from the step before), run it (after picking the option `predict`
    of its "predict first" question, then Reveal), and return its note."""
    from playwright.sync_api import expect

    if step > 1:
        page.get_by_role("button", name="Next").click()
    page.get_by_role("heading", name=f"Step {step}: {title}").wait_for()
    _settle(page)
    if predict is not None:
        page.get_by_text(predict, exact=True).click()
        expect(page.get_by_role("radio", name=predict)).to_be_checked()
        _settle(page)
        button = "Reveal"
    page.get_by_role("button", name=button).click()
    page.locator(".st-key-lesson-note").wait_for(timeout=TIMEOUT_MS)
    _settle(page)
    _no_errors(page)
    return _note(page)


def test_whole_lesson_notes_match_the_screen_and_independent_numbers(server):
    from playwright.sync_api import sync_playwright

    url, cache = server
    teacher_w = _tensors(DEMO / "teacher" / "model.safetensors")
    student_w = _tensors(DEMO / "student" / "model.safetensors")
    t_config = json.loads((DEMO / "teacher" / "config.json").read_text())
    s_config = json.loads((DEMO / "student" / "config.json").read_text())
    notes = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url + "/Lesson")
        page.get_by_text("Presentation mode").first.wait_for()
        _settle(page)

        # 1. load: parameters and layers from the weight files and configs
        notes[1] = note = _run(page, 1, "Load the pair")
        n_t, n_s = (sum(t.numel() for t in w.values()) for w in (teacher_w, student_w))
        assert note.startswith(f"The teacher has {n_t / 1e6:.2f} M parameters, {n_t / n_s:.2f}× the student's "
                               f"{n_s / 1e6:.2f} M, and {t_config['num_hidden_layers']} layers to the student's "
                               f"{s_config['num_hidden_layers']}")
        table = _table(page)
        assert [r["parameters"] for r in table] == [f"{n_t / 1e6:.2f} M", f"{n_s / 1e6:.2f} M"]
        assert [r["layers"] for r in table] == [str(t_config["num_hidden_layers"]), str(s_config["num_hidden_layers"])]

        # 2. sensitivity: the cached map, read here with safetensors
        notes[2] = note = _run(page, 2, "Sensitivity")
        maps = list((cache / "sensitivity").glob("*.safetensors"))
        assert len(maps) == 1
        scores = _tensors(maps[0])
        matrices = {n: float(t.double().sum()) for n, t in scores.items() if ".layers." in n and t.dim() == 2}
        ranked = sorted(matrices, key=lambda n: -matrices[n])
        total = sum(matrices.values())
        m = re.match(r"The most sensitive matrix is layer (\d+)'s (\w+), with ([\d.]+) % of the sensitivity", note)
        assert m and ranked[0] == f"model.layers.{m[1]}.{ROLES[m[2]]}.{m[2]}.weight"
        assert _close(m[3], 100 * matrices[ranked[0]] / total)
        table = _table(page)
        assert [(r["layer"], r["matrix"]) for r in table] == [(n.split(".")[2], n.split(".")[-2]) for n in ranked[:5]]
        assert table[0]["share"] == f"{m[3]} %"  # the note quotes the table

        # 3. where it sits: predict FFN first, then the shares by part
        notes[3] = note = _run(page, 3, "Where it sits", predict="FFN")
        sums, params = {}, {}
        for n, t in scores.items():
            sums[_group(n)] = sums.get(_group(n), 0.0) + float(t.double().sum())
        for n, t in teacher_w.items():
            params[_group(n)] = params.get(_group(n), 0) + t.numel()
        largest = max(sums, key=sums.get)
        m = re.match(r"(\w+) holds the largest share, ([\d.]+) % of the sensitivity, with ([\d.]+) % of the parameters",
                     note)
        assert m and m[1].lower() == largest.lower()
        assert _close(m[2], 100 * sums[largest] / sum(sums.values()))
        assert _close(m[3], 100 * params[largest] / sum(params.values()))
        shown = {r["part"]: _pct(r["sensitivity share"]) for r in _table(page)}
        assert all(_close(str(shown[g]), 100 * sums[g] / sum(sums.values())) for g in sums)
        verdict = page.get_by_text(re.compile(r"^You predicted FFN")).inner_text()
        assert verdict.endswith("right.") == (largest == "FFN")

        # 4. layers: every parameter of each teacher layer; top-4 kept in order vs evenly spaced
        notes[4] = note = _run(page, 4, "Layer choice")
        n_layers = t_config["num_hidden_layers"]
        k = s_config["num_hidden_layers"]
        totals = [sum(float(t.double().sum()) for n, t in scores.items() if n.startswith(f"model.layers.{i}."))
                  for i in range(n_layers)]
        chosen = sorted(sorted(range(n_layers), key=lambda i: (-totals[i], i))[:k])
        evenly = [round(j * (n_layers - 1) / (k - 1)) for j in range(k)]
        top = max(range(n_layers), key=lambda i: totals[i])
        m = re.match(r"Teacher layer (\d+) holds the largest share, ([\d.]+) %\. The layer map keeps \d+ layers, "
                     r"([\d, ]+), in their order: together ([\d.]+) % of the layer sensitivity, (.+?) the ([\d.]+) % "
                     r"of \d+ evenly spaced layers \(([\d, ]+)\)", note)
        assert m and int(m[1]) == top and _close(m[2], 100 * totals[top] / sum(totals))
        assert [int(x) for x in m[3].split(", ")] == chosen and [int(x) for x in m[7].split(", ")] == evenly
        kept, spread = (sum(totals[i] for i in layers) / sum(totals) for layers in (chosen, evenly))
        assert _close(m[4], 100 * kept) and _close(m[6], 100 * spread)
        assert m[5] == ("more than" if kept > spread else "the same as" if kept == spread else "less than")
        assert [r["student layer"] for r in _table(page)] == [str(chosen.index(i)) if i in chosen else "–"
                                                           for i in range(n_layers)]

        # 5. structure: predict the submatrix; best contiguous block and top entries by brute force
        notes[5] = note = _run(page, 5, "Structure", predict=f"submatrix: {STRUCTURE_HELP['submatrix']}")
        block, elements = [], []
        for name, transposed, (n, m_) in _moved_matrices(teacher_w, student_w, chosen):
            s = scores[name].T if transposed else scores[name]  # [o_T, i_T]
            whole = float(s.double().sum())
            block.append(_best_block(s, n, m_) / whole)
            elements.append(float(s.double().flatten().topk(n * m_).values.sum()) / whole)
        rows = {r["structure"]: r for r in _table(page)}
        m = re.match(r"Over the (\d+) matrices that move, the submatrix \(the default\) captures on average ([\d.]+) % "
                     r"of each matrix's sensitivity while taking ([\d.]+) % of its entries; random rows and columns "
                     r"of the same size capture ([\d.]+) %, so the submatrix captures ([\d.]+)× as much: ([a-z ,]+)\.",
                     note)
        assert m and int(m[1]) == len(block)
        assert _close(m[2], 100 * sum(block) / len(block)) and rows["submatrix"]["captured (mean)"] == f"{m[2]} %"
        assert _close(_pct(rows["elements"]["captured (mean)"]), 100 * sum(elements) / len(elements))
        assert rows["random"]["captured (mean)"] == f"{m[4]} %"
        ratio = _pct(rows["submatrix"]["captured (mean)"]) / _pct(rows["random"]["captured (mean)"])
        assert abs(float(m[5]) - ratio) < 0.02  # (from the rounded shares on screen)
        best = max(rows, key=lambda r: _pct(rows[r]["captured (mean)"]))
        assert f"The structure that captures the most is {best} ({rows[best]['captured (mean)']})" in note
        verdict = page.get_by_text(re.compile(r"^You predicted submatrix")).inner_text()
        assert verdict.endswith("right.") == (best == "submatrix")
        _shot(page, "9_lesson")
        page.get_by_text("Presentation mode").first.click()
        page.wait_for_function(  # the presentation style is in: the title is larger than Streamlit's 2.75rem
            "() => parseFloat(getComputedStyle(document.querySelector('[data-testid=stMain] h1')).fontSize) > 48")
        _settle(page)
        _shot(page, "9_lesson_presentation")
        assert page.get_by_role("heading", name="Step 5: Structure").count() == 1
        page.get_by_text("Presentation mode").first.click()
        page.wait_for_function(
            "() => parseFloat(getComputedStyle(document.querySelector('[data-testid=stMain] h1')).fontSize) < 48")
        _settle(page)
        assert page.get_by_role("heading", name="Step 5: Structure").count() == 1  # the toggle keeps the step

        # 6. export: energy of each extracted block, from the teacher's weights and the export's selection
        notes[6] = note = _run(page, 6, "Export")
        export = next((cache / "exports").glob("lesson-*"))
        selection = _tensors(export / "selection.safetensors")
        rank = json.loads((export / "paraknow.json").read_text())["rank"]
        energy = {}
        for name, transposed, _ in _moved_matrices(teacher_w, student_w, chosen):
            w = teacher_w[name].T if transposed else teacher_w[name]
            module = {"model.embed_tokens.weight": "model.embed_tokens", "lm_head.weight": "lm_head"}.get(name)
            module = module or f"model.layers.{chosen.index(int(name.split('.')[2]))}.{'.'.join(name.split('.')[3:-1])}"
            rows_, cols = selection[module + ".rows"].long(), selection[module + ".cols"].long()
            sigma = torch.linalg.svdvals(w[rows_][:, cols].double())
            energy[module] = float(sigma[:rank].square().sum() / sigma.square().sum())
        m = re.match(r"At rank (\d+) the LoRA factors keep on average ([\d.]+) % .*?the least is kept for (\S+) "
                     r"\(([\d.]+) %\)", note)
        assert m and int(m[1]) == rank and _close(m[2], 100 * sum(energy.values()) / len(energy))
        assert _close(m[4], 100 * energy[m[3]]) and energy[m[3]] <= min(energy.values()) + 1e-4
        assert {r["module"]: r["energy at rank r"] for r in _table(page)}[m[3]] == f"{m[4]} %"

        # 7. fine-tune: a real background run; the note against its metrics.jsonl
        notes[7] = note = _run(page, 7, "Fine-tune", button="Start fine-tuning in the background")
        metrics = [json.loads(line) for line in next((cache / "runs").glob("*/metrics.jsonl")).read_text().splitlines()]
        losses = [r["loss"] for r in metrics if r.get("loss") is not None]
        w = max(1, len(losses) // 4)
        assert f"went from {sum(losses[:w]) / w:.3f} (steps 1–{w}) to {sum(losses[-w:]) / w:.3f}" in note
        accuracy = [r["eval_accuracy"] for r in metrics if r.get("eval_accuracy") is not None]
        assert accuracy and f"{100 * accuracy[-1]:.1f} %" in note

        # 8. compare: the reference's loss under the student and the trained adapter, by a plain forward pass
        notes[8] = note = _run(page, 8, "Compare")
        losses = _reference_losses(next((cache / "runs").glob("*/adapter")))
        m = re.search(r"loss on this question went from ([\d.]+) to ([\d.]+) nats per token, and over the first "
                      r"(\d+) test items from ([\d.]+) to ([\d.]+)", note)
        assert m and _close(m[1], losses["student"][0], 3) and _close(m[2], losses["trained"][0], 3)
        assert int(m[3]) == len(losses["student"]) - 1
        assert _close(m[4], sum(losses["student"][1:]) / int(m[3]), 3)
        assert _close(m[5], sum(losses["trained"][1:]) / int(m[3]), 3)
        table = _table(page)
        answers = [r["answer"] for r in table]
        assert f"the student answered “{answers[0]}”" in note and f"it answers “{answers[2]}”" in note
        assert ("the answer changed" in note) == (answers[0] != answers[2])
        assert ("exactly as the student does" in note) == (answers[1] == answers[0])

        # 9. recap: every note, as it was shown
        _run(page, 9, "Recap")
        assert [r["what we saw"] for r in _table(page)] == [notes[i] for i in range(1, 9)]
        browser.close()


def _reference_losses(adapter: Path) -> dict[str, list[float]]:
    """Mean cross-entropy of the reference completion of test item 0, then of items 0..15, under the
    student and the student + trained adapter (transformers + PEFT, no paraknow model code)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from paraknow.core.data import encode
    from paraknow.core.records import split_conversation
    from paraknow.core.tasks import task_records

    tokenizer = AutoTokenizer.from_pretrained(DEMO / "student")
    student = AutoModelForCausalLM.from_pretrained(DEMO / "student", dtype=torch.float32).eval()
    trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(DEMO / "student", dtype=torch.float32),
                                        str(adapter)).eval()
    records = task_records("arith", "test")[:16]
    items = []
    for record in records[:1]:  # the question alone, as the Playground scores it: user turn + completion
        messages, reference = split_conversation(record)
        items.append({"prompt": messages[-1]["content"], "completion": reference})
    items += records
    out = {}
    for name, model in (("student", student), ("trained", trained)):
        values = []
        for item in items:
            enc = encode(tokenizer, item)
            ids, labels = torch.tensor([enc.input_ids]), torch.tensor([enc.labels])
            with torch.inference_mode():
                logits = model(input_ids=ids).logits[0, :-1]  # [seq-1, vocab]
            target = labels[0, 1:]
            keep = target != -100
            values.append(float(torch.nn.functional.cross_entropy(logits[keep], target[keep])))
        out[name] = values
    return out

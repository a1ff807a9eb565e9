"""The Mapping and Export pages show a plan's refusal without making a link of what it quotes: an
override naming a module as a markdown link (as a crafted link or recipe can hold) is refused in
plain text (ui.widgets.page_message), never as a clickable link."""
from __future__ import annotations

import re

import pytest
from apptest import APP
from streamlit.testing.v1 import AppTest

from ui import state as S

PHISH = "[Click here](https://evil.example/phish)"


@pytest.mark.slow
@pytest.mark.parametrize("page", ["pages/4_Mapping.py", "pages/5_Export.py"])
def test_a_plan_refusal_quoting_a_link_is_plain_text(page):
    at = AppTest.from_file(APP, default_timeout=600)
    at.run()
    at.button(key="w_home_quickstart").click().run()
    at.session_state[S.OVERRIDES] = {PHISH: (0, 0)}
    at.switch_page(page).run()
    errors = [str(e.value) for e in at.error]
    assert any("Click here" in e for e in errors), errors  # the refusal, quoting the override
    for error in errors:  # as markdown, nothing in it makes a link: its brackets are escaped
        assert not re.search(r"(?<!\\)\[[^\]]*(?<!\\)\]\(", error), error
        assert "https://" not in error, error  # the autolink is broken too

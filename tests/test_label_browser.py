"""The labelling page driven in a real headless Chromium (Selenium), keyboard only.

Needs Debian's browser and driver plus selenium; skipped cleanly without them:

    apt-get install -y chromium chromium-driver && pip install selenium

Selenium is pointed at /usr/bin/chromium and /usr/bin/chromedriver explicitly, so it never tries to
download a browser or a driver (Selenium Manager is not used). Set RLFL_LABEL_SCREENSHOT=/path.png to
keep a screenshot of the page showing the item with the ``<script>`` response.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rlfl.feedback.store import LabelStore
from rlfl.feedback.web import LabelServeConfig, start_label_server

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
INSTALL = "apt-get install -y chromium chromium-driver && pip install selenium"
SCRIPT = "<script>alert(1)</script>"
ITEMS = [
    {"prompt": "Write one sentence about the sea.", "response_a": "The sea is wide, grey and endlessly patient.",
     "response_b": "sea big. water.", "source_a": "sft", "source_b": "base"},
    {"prompt": "What is 2 + 2?", "response_a": "4", "response_b": "Four.", "source_a": "sft", "source_b": "base"},
    {"prompt": "Say hello to the user.", "response_a": "Hello! How can I help you today?",
     "response_b": f"Hi {SCRIPT} there", "source_a": "sft", "source_b": "base"},
    {"prompt": "Review the film in two lines.",
     "response_a": "A warm, funny film with a weak last act.\nWorth seeing once.",
     "response_b": "Boring. I left early.", "source_a": "ppo", "source_b": "sft"},
    {"prompt": "Name a colour.", "response_a": "Blue.", "response_b": "Ultramarine, a deep blue.",
     "source_a": "ppo", "source_b": "sft"},
]


@pytest.fixture
def driver():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER}; install them with: {INSTALL}")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip(f"needs selenium; install it with: {INSTALL}")
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager reach for the network
    opts = Options()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,860", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    opts.set_capability("unhandledPromptBehavior", "ignore")  # an alert() stays open, so the test can see it
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    drv.set_page_load_timeout(30)
    yield drv
    drv.quit()


def test_label_five_pairs_with_the_keyboard_undo_and_export(driver, tmp_path):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    def js(expr: str):
        return driver.execute_script(f"return {expr};")

    def settled(view: str, done: int) -> None:
        """Wait until no request is in flight, the view is ``view`` and the progress reads ``done / 5``."""
        WebDriverWait(driver, 20).until(lambda d: js("document.body.dataset.busy") == "0"
                                        and js("document.body.dataset.view") == view
                                        and d.find_element(By.ID, "progress").text == f"{done} / 5")

    def screen() -> dict:
        return {"id": int(js("document.body.dataset.itemId")), "prompt": driver.find_element(By.ID, "prompt").text,
                "left": driver.find_element(By.ID, "left").text, "right": driver.find_element(By.ID, "right").text}

    def press(key: str) -> None:
        ActionChains(driver).send_keys(key).perform()

    store = LabelStore(tmp_path / "labels.db")
    ids = store.add_items(ITEMS)
    by_id = dict(zip(ids, ITEMS))
    with store, start_label_server(LabelServeConfig(store=str(store.path), port=0), store=store) as srv:
        driver.get(srv.url)
        assert js("document.body.dataset.view") == "login"
        name = driver.find_element(By.ID, "name")
        name.send_keys("alice")
        name.send_keys(Keys.ENTER)
        settled("item", 0)

        seen: dict[int, dict] = {}  # what the browser showed for each item (the last time)

        def answer(key: str, done_after: int, view_after: str = "item") -> dict:
            shown = screen()
            seen[shown["id"]] = shown
            press(key)
            settled(view_after, done_after)
            return shown

        answer("1", 1)                      # item 1: left better
        answer("3", 2)                      # item 2: tie
        third = answer("2", 3)              # item 3 (the one with <script>): right better ...
        press("u")                          # ... undone: the same item comes back, in the same order
        settled("item", 2)
        assert screen() == third
        # the script is text on the screen, and no element came of it
        assert SCRIPT in third["left"] + third["right"]
        assert driver.find_elements(By.CSS_SELECTOR, "#left *, #right *, #prompt *") == []
        assert len(driver.find_elements(By.TAG_NAME, "script")) == 2  # the page's config block and its code
        shot = Path(os.environ.get("RLFL_LABEL_SCREENSHOT", tmp_path / "label_page.png"))
        assert driver.save_screenshot(str(shot))
        answer("1", 3)                      # item 3 re-labelled: left better
        fourth = answer(" ", 4)             # item 4 skipped with space ...
        press(Keys.BACKSPACE)               # ... and the skip undone with Backspace
        settled("item", 3)
        assert screen() == fourth
        answer("2", 4)                      # item 4: right better
        answer("1", 5, view_after="done")   # item 5: left better -> the done state
        assert "5 items" in driver.find_element(By.ID, "done-text").text

        with pytest.raises(NoAlertPresentException):
            driver.switch_to.alert  # noqa: B018 - the property raises when no alert is open
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == [], severe  # no CSP violation, no failed request, no script error

        out = tmp_path / "prefs.jsonl"
        assert store.export_preferences(out) == 5
    records = {r["item_id"]: r for r in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    assert sorted(records) == sorted(ids)
    pressed = {ids[0]: "left", ids[1]: "tie", ids[2]: "left", ids[3]: "right", ids[4]: "left"}
    for item_id, side in pressed.items():
        item, shown, rec = by_id[item_id], seen[item_id], records[item_id]
        order = "ab" if shown["left"] == item["response_a"] else "ba"
        assert (shown["left"], shown["right"]) == ((item["response_a"], item["response_b"]) if order == "ab"
                                                   else (item["response_b"], item["response_a"]))
        assert rec["shown_order"] == order and rec["annotator"] == "alice" and rec["simulated"] is False
        assert rec["prompt"] == item["prompt"] == shown["prompt"]
        if side == "tie":
            assert rec.get("tie") is True
        else:
            assert rec["chosen"] == shown[side] and rec["rejected"] == shown["right" if side == "left" else "left"]
            assert "tie" not in rec


def test_a_private_link_opens_the_page_as_its_annotator(driver, tmp_path):
    """On a remote server the page opens only through a private link, already signed in as its annotator."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def js(expr: str):
        return driver.execute_script(f"return {expr};")

    store = LabelStore(tmp_path / "labels.db")
    store.add_items(ITEMS)
    cfg = LabelServeConfig(store=str(store.path), host="0.0.0.0", allow_remote=True, port=0,
                           annotators=["alice", "bob"])
    with store, start_label_server(cfg, store=store) as srv:
        local = f"127.0.0.1:{srv.port}"
        driver.get(f"http://{local}/")
        assert "private link" in driver.find_element(By.TAG_NAME, "body").text  # no page without a key
        driver.get(srv.links["bob"].replace(f"0.0.0.0:{srv.port}", local))
        WebDriverWait(driver, 20).until(lambda d: js("document.body.dataset.view") == "item"
                                        and js("document.body.dataset.busy") == "0")
        assert driver.find_element(By.ID, "progress").text == "0 / 5"
        ActionChains(driver).send_keys("1").perform()
        WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "progress").text == "1 / 5")
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "403" not in e["message"]]
        assert severe == [], severe
        assert [lab.annotator for lab in store.labels()] == ["bob"]

"""The web chat in a real browser (Debian's chromium, driven by selenium): the page loads the
models and the memory panel, a question typed in streams its answer in, and Stop ends it,
which cancels the request on the board."""

import os
import shutil
import tempfile

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from conftest import EVENT_DEADLINE, metric, wait_until


@pytest.fixture(scope="module")
def browser():
    profile = tempfile.mkdtemp(prefix="tessera-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
    ]:
        options.add_argument(flag)
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def test_type_a_question_see_it_stream_and_stop_it(browser, tiny_gateway):
    cancels_before = metric(tiny_gateway.metrics(), "tessera_board_cancels_total")
    browser.get(tiny_gateway.url + "/")
    wait = WebDriverWait(browser, EVENT_DEADLINE, poll_frequency=0.2)
    wait.until(lambda driver: len(driver.find_elements(By.CSS_SELECTOR, "#model option")) == 3)
    wait.until(lambda driver: len(driver.find_elements(By.CSS_SELECTOR, "#memory .pool")) >= 6)
    pools = {row.get_attribute("data-pool") for row in browser.find_elements(By.CSS_SELECTOR, "#memory .pool")}
    assert {"weights", "kv", "activations", "small", "protocol", "dma"} <= pools
    Select(browser.find_element(By.ID, "model")).select_by_value("slow.gguf")

    prompt = browser.find_element(By.ID, "prompt")
    prompt.send_keys("Tell me a long story")
    prompt.send_keys(Keys.ENTER)
    wait.until(lambda driver: driver.find_elements(By.CSS_SELECTOR, ".message.user"))
    assert browser.find_element(By.CSS_SELECTOR, ".message.user").text == "Tell me a long story"
    answer = browser.find_element(By.CSS_SELECTOR, ".message.assistant")
    length = lambda: browser.execute_script("return arguments[0].textContent.length", answer)  # noqa: E731
    wait.until(lambda driver: length() >= 1)
    first = length()
    wait.until(lambda driver: length() > first + 2)
    assert "streaming" in answer.get_attribute("class"), "still streaming while the text grows"
    assert browser.find_element(By.ID, "send").get_attribute("disabled") is not None

    browser.find_element(By.ID, "stop").click()
    wait.until(lambda driver: answer.get_attribute("data-done") == "true")
    assert answer.get_attribute("data-finish") == "stopped"
    assert "streaming" not in answer.get_attribute("class")
    assert browser.find_element(By.ID, "stop").get_attribute("disabled") is not None
    wait_until(
        lambda: metric(tiny_gateway.metrics(), "tessera_board_cancels_total") == cancels_before + 1,
        EVENT_DEADLINE,
        "the board to confirm the stopped answer's cancel",
    )

    browser.find_element(By.ID, "new-chat").click()
    wait.until(lambda driver: not driver.find_elements(By.CSS_SELECTOR, ".message"))

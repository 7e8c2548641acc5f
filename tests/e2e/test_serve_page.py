"""The web page in headless Chromium: type a prompt, generate, watch progress and the
preview over server-sent events, see the result in the gallery."""

import shutil

import pytest

from serve_helpers import KilnServer


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    driver_path = shutil.which("chromedriver")
    if not driver_path or not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("chromium and chromium-driver are not installed (scripts/install-deps.sh installs them)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server():
    s = KilnServer("--preview-every", 1)
    yield s
    assert s.stop() == 0, s.stderr()


def test_page_generates_an_image_with_progress_and_preview(browser, server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#model option")) == 1)
    assert browser.find_element(By.CSS_SELECTOR, "#model option").text == "kiln-tiny"
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("a yellow star on a black background")
    steps = browser.find_element(By.ID, "steps")
    steps.clear()
    steps.send_keys("30")
    browser.find_element(By.ID, "generate").click()
    # Progress arrives over the event stream while the job runs.
    wait.until(lambda d: "step" in d.find_element(By.ID, "status").text and
               float(d.find_element(By.ID, "progress").get_attribute("value")) > 0)
    wait.until(lambda d: d.find_element(By.ID, "preview").get_attribute("src").startswith(("data:image/png", "http")))
    wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("succeeded"))
    # The gallery shows the finished image, loaded.
    wait.until(lambda d: d.execute_script(
        "const img = document.querySelector('#gallery .result img');"
        "return img && img.complete && img.naturalWidth === 64;"))
    card = browser.find_element(By.CSS_SELECTOR, "#gallery .result")
    assert "a yellow star on a black background" in card.text and "succeeded" in card.text
    assert browser.find_element(By.ID, "error").text == ""
    browser.save_screenshot(str(tmp_path / "page.png"))

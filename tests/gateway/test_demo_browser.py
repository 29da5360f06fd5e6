"""The storefront demo page (/demo) in a real headless Chromium against the real server: a key typed
in, a photo uploaded, one garment tried and then the whole catalogue of three; the images shown must
load and be, byte for byte, the results the API serves. A screenshot is left in bench/overlays/demo.png.

Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them) and selenium (the test
extra); Selenium is pointed at /usr/bin/chromedriver, so it never downloads a driver of its own."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from skimage import data

from services.common.config import PROJECT_ROOT, get_settings
from services.gateway.app import create_app
from tests.gateway.conftest import register_garments
from tests.gateway.helpers import Key, Server, encode

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = PROJECT_ROOT / "bench" / "overlays" / "demo.png"
TIMEOUT_S = 60

# The bytes behind an <img>'s blob: URL, as base64 (the page made the URL from the API's answer).
READ_IMAGE_BYTES = """
const [element, done] = arguments;
fetch(element.src).then(r => r.arrayBuffer()).then(buffer => {
  let text = "";
  for (const byte of new Uint8Array(buffer)) text += String.fromCharCode(byte);
  done(btoa(text));
}, error => done("error: " + error));
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[test]'")
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("no Chromium on this machine: apt-get install -y chromium chromium-driver (.ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1500",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def wait_for(driver: Any, condition: Callable[[], Any], what: str, timeout: float = TIMEOUT_S) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda _: condition(), message=what)


def loaded(driver: Any, element: Any) -> bool:
    return bool(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", element))


def test_the_demo_page_tries_one_garment_then_all_of_them(server: Server, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    key: Key = server.create_key("boutique")
    garment_ids = register_garments(server, key, 3)
    photo = tmp_path / "shopper.jpg"
    photo.write_bytes(encode(np.ascontiguousarray(data.astronaut()[:, ::-1]), "JPEG"))
    driver = browser
    driver.get(f"{server.url}/demo")
    driver.find_element(By.ID, "api-key").send_keys(key.api_key)
    driver.find_element(By.ID, "connect-button").click()
    tiles = wait_for(driver, lambda: len(driver.find_elements(By.CSS_SELECTOR, ".garment")) == 3 and
                     driver.find_elements(By.CSS_SELECTOR, ".garment"), "the catalogue's three garments")  # fmt: skip
    assert [tile.get_attribute("data-garment-id") for tile in tiles] == garment_ids
    wait_for(
        driver, lambda: all(loaded(driver, t.find_element(By.CSS_SELECTOR, "img.product")) for t in tiles), "products"
    )

    driver.find_element(By.ID, "photo-upload").send_keys(str(photo))
    wait_for(driver, lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-person-id"), "registered")
    person_id = driver.find_element(By.TAG_NAME, "body").get_attribute("data-person-id")
    assert person_id.startswith("per_")

    # One garment, on a click.
    first = tiles[0].find_element(By.CSS_SELECTOR, "img.tryon-result")
    tiles[0].click()
    wait_for(driver, lambda: first.get_attribute("data-job-id") and loaded(driver, first), "the first try-on")
    single_job = first.get_attribute("data-job-id")
    fitting = driver.find_element(By.ID, "fitting-result")
    assert fitting.get_attribute("data-job-id") == single_job and loaded(driver, fitting)

    # How it was made: pose, parse and warped garment, through the job's public intermediates.
    driver.find_element(By.ID, "show-intermediates").click()
    steps = [driver.find_element(By.ID, f"int-{name}") for name in ("pose", "parse", "warped")]
    wait_for(
        driver, lambda: all(loaded(driver, s) and s.get_attribute("data-job-id") == single_job for s in steps), "steps"
    )

    # The whole catalogue in one batch, filled in as the jobs finish.
    driver.find_element(By.ID, "try-all").click()
    wait_for(driver, lambda: driver.find_element(By.ID, "progress-text").text == "3 of 3", "the batch's progress")
    batch_id = driver.find_element(By.TAG_NAME, "body").get_attribute("data-batch-id")
    with server.client(key) as client:
        batch = client.get(f"/v1/tryon/batch/{batch_id}", params={"wait": 30}).json()
        assert batch["status"] == "finished" and batch["counts"]["succeeded"] == 3, batch
        assert batch["person_id"] == person_id
        expected = {job["garment_id"]: job["id"] for job in batch["jobs"]}
        for tile in tiles:
            result = tile.find_element(By.CSS_SELECTOR, "img.tryon-result")
            job_id = expected[tile.get_attribute("data-garment-id")]
            wait_for(
                driver, lambda r=result, j=job_id: r.get_attribute("data-job-id") == j and loaded(driver, r), job_id
            )
            assert driver.execute_script("return arguments[0].naturalWidth", result) == 512
            shown = base64.b64decode(driver.execute_async_script(READ_IMAGE_BYTES, result))
            served = client.get(f"/v1/tryon/{job_id}/result")
            assert served.status_code == 200 and shown == served.content, job_id
        # The single try-on was the same picture as the batch's for that garment: same person, same garment.
        single = client.get(f"/v1/tryon/{single_job}/result").content
        assert single == client.get(f"/v1/tryon/{expected[garment_ids[0]]}/result").content
    assert driver.find_element(By.ID, "message").get_attribute("hidden") is not None  # no error shown
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOT))

    # A photo with nobody in it: the shopper reads what to do, not an error code.
    cat = tmp_path / "cat.jpg"
    cat.write_bytes(encode(data.chelsea(), "JPEG"))
    driver.find_element(By.ID, "photo-upload").send_keys(str(cat))
    wait_for(
        driver, lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-person-id") != person_id, "cat"
    )
    tiles[1].click()
    message = driver.find_element(By.ID, "message")
    wait_for(driver, lambda: message.is_displayed() and message.text, "the error message")
    assert message.text.startswith("We couldn't find a person in this photo"), message.text


def test_the_demo_page_is_plain_files_from_this_server(server: Server) -> None:
    """No build step, no CDN: the page and what it loads come from the gateway itself, under a policy
    that lets it reach nothing else; and it is off unless FITROOM_DEMO=1 (the test server sets it)."""
    page = httpx.get(f"{server.url}/demo")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("demo.js", "demo.css", "samples/astronaut.jpg"):
        assert httpx.get(f"{server.url}/demo/static/{asset}").status_code == 200, asset
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from another origin
    assert "/demo" not in httpx.get(f"{server.url}/openapi.json").text
    off = create_app(get_settings().model_copy(update={"demo": False}))
    assert not [route for route in off.routes if getattr(route, "path", "").startswith("/demo")]

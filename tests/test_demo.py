"""`unimodal demo`: the page's handlers give the API's outputs, and the served page does the same
in a real browser (headless Debian chromium driven by Selenium) on a tiny random exported model."""

import io
import shutil
import socket
import time
import urllib.request

import numpy as np
import pytest
import torch

gr = pytest.importorskip("gradio", reason="the demo needs the demo extra: pip install 'unimodal[demo]'")

from PIL import Image  # noqa: E402

from unimodal import cli  # noqa: E402
from unimodal.api import UniModal  # noqa: E402
from unimodal.codecs import PixelCodec  # noqa: E402
from unimodal.config import ModelConfig  # noqa: E402
from unimodal.demo import MAX_STEPS, TABS, Handlers, build_demo, serve  # noqa: E402
from unimodal.model import UniModalModel  # noqa: E402
from unimodal.pretrained import save_export  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PROMPT = "a large red circle at the top left"
WAIT_S = 20  # longest wait for one page event; a tiny model answers in well under a second


@pytest.fixture(scope="module")
def export(tokenizer, tmp_path_factory):
    """An exported tiny random model (what `unimodal demo --model FOLDER` loads) and the API on it."""
    torch.manual_seed(0)
    model = UniModalModel(ModelConfig.preset("debug", vocab_size=tokenizer.vocab_size))
    for param in model.denoise_head.parameters():  # zero-initialised; make the images differ from the noise
        torch.nn.init.normal_(param, std=0.1)
    folder = tmp_path_factory.mktemp("demo") / "export"
    save_export(folder, model, tokenizer, PixelCodec())
    return folder, UniModal.from_pretrained(folder)


@pytest.fixture(scope="module")
def api(export) -> UniModal:
    return export[1]


@pytest.fixture(scope="module")
def picture_file(tmp_path_factory):
    """A non-square PNG (the API resizes and crops it) and the PIL image the page should receive."""
    pixels = np.random.RandomState(0).randint(0, 256, (20, 28, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("demo-images") / "picture.png"
    Image.fromarray(pixels).save(path)
    return path, Image.fromarray(pixels)


# ----------------------------------------------------------------------------- handlers, no browser
def test_handlers_give_the_apis_caption_answer_and_image(api, picture_file):
    _, picture = picture_file
    handlers = Handlers(api)
    assert handlers.caption(picture) == api.caption([picture])[0]
    assert handlers.answer(picture, "  what colour is the circle? ") == api.answer([picture], ["what colour is the circle?"])[0]
    calls = []
    image = handlers.generate(PROMPT, 3, 2.0, 5, progress=lambda done, **kwargs: calls.append(done))
    expected = api.generate([PROMPT], num_steps=3, guidance_scale=2.0, seed=5)[0]
    np.testing.assert_array_equal(np.asarray(image), np.asarray(expected))
    assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]  # the progress bar: empty, then once per step


BAD_INPUTS = {
    "caption without image": (lambda h, pic: h.caption(None), "Upload an image first"),
    "answer without image": (lambda h, pic: h.answer(None, "what?"), "Upload an image first"),
    "empty question": (lambda h, pic: h.answer(pic, "   "), "Type a question about the image first"),
    "no question": (lambda h, pic: h.answer(pic, None), "Type a question about the image first"),
    "zero steps": (lambda h, pic: h.generate(PROMPT, 0, 3.0, 0), "Number of steps must be a whole number from 1 to"),
    "too many steps": (lambda h, pic: h.generate(PROMPT, MAX_STEPS + 1, 3.0, 0), f"from 1 to {MAX_STEPS}, got"),
    "fractional steps": (lambda h, pic: h.generate(PROMPT, 2.5, 3.0, 0), "Number of steps must be a whole number"),
    "infinite steps": (lambda h, pic: h.generate(PROMPT, float("inf"), 3.0, 0), "Number of steps must be a whole number"),
    "no steps": (lambda h, pic: h.generate(PROMPT, None, 3.0, 0), "Number of steps must be a whole number"),
    "guidance below 1": (lambda h, pic: h.generate(PROMPT, 2, 0.5, 0), r"Guidance scale must be between 1 \(no guidance\)"),
    "negative seed": (lambda h, pic: h.generate(PROMPT, 2, 3.0, -1), "Seed must be a whole number from 0 to"),
    "no seed": (lambda h, pic: h.generate(PROMPT, 2, 3.0, None), "Seed must be a whole number"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_raises_a_message_for_the_page(api, picture_file, name):
    call, message = BAD_INPUTS[name]
    with pytest.raises(gr.Error, match=message):
        call(Handlers(api), picture_file[1])


def test_an_api_error_becomes_a_message_for_the_page(api, picture_file):
    """Errors the API words for users (here a wrong image array) reach the page as they are."""
    with pytest.raises(gr.Error, match=r"channels; got shape \(16, 16, 5\)"):
        Handlers(api).caption(np.zeros((16, 16, 5), np.uint8))


def test_an_empty_prompt_warns_and_samples_without_text(api):
    with pytest.warns(UserWarning, match="The prompt is empty"):
        image = Handlers(api).generate("", 2, 3.0, 0)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(api.generate([""], num_steps=2, seed=0)[0]))


def test_the_page_has_a_tab_per_task_and_no_analytics(api):
    assert [label for label, _ in TABS] == ["Caption", "Answer", "Generate"]
    demo = build_demo(api)
    assert isinstance(demo, gr.Blocks) and not demo.analytics_enabled
    assert {"caption", "answer", "generate"} <= {dep.api_name for dep in demo.fns.values()}


def test_the_cli_serves_the_exported_model(export, monkeypatch):
    """`unimodal demo --model FOLDER --port P --host H` loads the export and serves it (serve is
    replaced by a recorder: the real one blocks until Ctrl+C)."""
    folder, api = export
    served = {}
    monkeypatch.setattr("unimodal.demo.serve", lambda model, host, port: served.update(model=model, host=host, port=port))
    assert cli.main(["demo", "--model", str(folder), "--port", "7999", "--host", "0.0.0.0"]) == 0
    assert (served["host"], served["port"]) == ("0.0.0.0", 7999)
    picture = torch.rand(3, 16, 16)
    assert served["model"].caption([picture]) == api.caption([picture])
    assert cli.main(["demo", "--model", str(folder)]) == 0
    assert (served["host"], served["port"]) == ("127.0.0.1", 7860)  # the documented defaults


@pytest.mark.parametrize("argv,message", [(["--port", "0"], "choose a TCP port from 1 to 65535"),
                                          (["--port", "70000"], "choose a TCP port from 1 to 65535")])
def test_the_cli_rejects_a_bad_port(export, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--model", str(export[0]), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


# ----------------------------------------------------------------------------- the page in a browser
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def page_url(api):
    """The demo served in this process on a free localhost port; closed after the module's tests."""
    demo = serve(api, host="127.0.0.1", port=_free_port(), block=False, quiet=True)
    try:
        yield demo.local_url
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip(f"the browser test needs {CHROMIUM} and {CHROMEDRIVER}: install chromium and chromium-driver "
                    "(make browser)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (the dev extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--window-size=1280,1600", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_captions_answers_and_generates_like_the_api_in_a_browser(api, browser, page_url, picture_file):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as when
    from selenium.webdriver.support.ui import WebDriverWait

    start = time.monotonic()
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(page_url)

    def tab(label):
        wait.until(when.element_to_be_clickable((By.XPATH, f"//button[@role='tab'][normalize-space()='{label}']"))).click()

    def toast(text):  # Gradio shows gr.Error / gr.Warning as a toast on the page
        return wait.until(when.visibility_of_element_located((By.XPATH, f"//*[contains(text(), '{text}')]")))

    # Caption: without an image the page says what to do; with one it shows the API's caption.
    tab("Caption")
    wait.until(when.element_to_be_clickable((By.ID, "caption-button"))).click()
    toast("Upload an image first.")
    path, picture = picture_file
    browser.find_element(By.CSS_SELECTOR, "#caption-image input[type=file]").send_keys(str(path))
    wait.until(when.visibility_of_element_located((By.CSS_SELECTOR, "#caption-image img")))  # upload done
    browser.find_element(By.ID, "caption-button").click()
    output = browser.find_element(By.CSS_SELECTOR, "#caption-output textarea")
    expected = api.caption([picture])[0]
    assert expected, "the random model's caption is empty: pick another seed so the test shows something"
    wait.until(lambda _: output.get_attribute("value"))
    assert output.get_attribute("value") == expected

    # Answer: its own upload; Enter in the question box asks.
    tab("Answer")
    question = wait.until(when.visibility_of_element_located((By.CSS_SELECTOR, "#answer-question textarea")))
    browser.find_element(By.CSS_SELECTOR, "#answer-image input[type=file]").send_keys(str(path))
    wait.until(when.visibility_of_element_located((By.CSS_SELECTOR, "#answer-image img")))
    question.send_keys("what colour is the circle?", Keys.ENTER)
    output = browser.find_element(By.CSS_SELECTOR, "#answer-output textarea")
    expected = api.answer([picture], ["what colour is the circle?"])[0]
    assert expected, "the random model's answer is empty: pick another seed so the test shows something"
    wait.until(lambda _: output.get_attribute("value"))
    assert output.get_attribute("value") == expected

    # Generate: 2 steps, seed 3; the page shows exactly the pixels of UniModal.generate.
    tab("Generate")
    prompt = wait.until(when.visibility_of_element_located((By.CSS_SELECTOR, "#generate-prompt textarea")))
    prompt.send_keys(PROMPT)
    steps = browser.find_element(By.CSS_SELECTOR, "#generate-steps input[type=number]")
    steps.send_keys(Keys.CONTROL, "a")
    steps.send_keys("2", Keys.TAB)
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#generate-steps input[type=range]").get_attribute("value") == "2")
    seed = browser.find_element(By.CSS_SELECTOR, "#generate-seed input")
    seed.send_keys(Keys.CONTROL, "a")
    seed.send_keys("3", Keys.TAB)
    browser.find_element(By.ID, "generate-button").click()
    shown = wait.until(when.visibility_of_element_located((By.CSS_SELECTOR, "#generate-image img")))
    with urllib.request.urlopen(shown.get_attribute("src"), timeout=WAIT_S) as response:  # the served file
        served = Image.open(io.BytesIO(response.read())).convert("RGB")
    expected_image = api.generate([PROMPT], num_steps=2, guidance_scale=3.0, seed=3)[0]
    np.testing.assert_array_equal(np.asarray(served), np.asarray(expected_image))

    # Everything the page loaded (scripts, styles, fonts, images) came from the demo's own server.
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(url.startswith(page_url.rstrip("/")) for url in resources), resources
    print(f"browser test: {time.monotonic() - start:.1f} s")

"""`unimodal demo`: a web page to caption, answer questions about and generate images.

    unimodal demo --model runs/tiny/export [--port 7860] [--host 127.0.0.1] [--device cpu]

    from unimodal.demo import build_demo, serve
    serve(UniModal.from_pretrained("runs/tiny/export"), port=7860)

One Gradio page with a tab per task: Caption (image -> caption), Answer (image + question -> answer)
and Generate (prompt, steps, guidance scale, seed -> image, with a progress bar). Gradio is the
optional extra `demo` (`pip install 'unimodal[demo]'`); only this module imports it, and the CLI
imports this module only for `unimodal demo`, so the inference library stays free of it.
Nothing leaves the machine: analytics are off, no share link, and the page's assets (fonts included)
are served by Gradio itself.
"""

from __future__ import annotations

import math
import os

# Gradio reads the variable when it creates Blocks and when it launches; set before anything of it runs.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr
from PIL import Image

from .api import UniModal

MAX_STEPS = 200  # sampling steps the page accepts: one visitor cannot hold the shared queue for long
DEFAULT_STEPS = 25  # the CLI's default
MAX_GUIDANCE = 10.0
DEFAULT_GUIDANCE = 3.0
MAX_SEED = 2**31 - 1  # prompt i of a batch uses seed + i; keep far inside torch's seed range
CAPTION_TOKENS = 32  # the CLI's reply lengths
ANSWER_TOKENS = 16
# Tiny model images (16-64 px) shown large: keep their pixels sharp instead of blurred.
CSS = "#generate-image img { image-rendering: pixelated; }"
# One model call at a time across all tabs: they share one set of weights on one device, and the
# queue shows waiting visitors their place instead of splitting the CPU/GPU between requests.
ONE_AT_A_TIME = dict(concurrency_limit=1, concurrency_id="model")


class Handlers:
    """The page's event functions, plain Python so tests can call them without a browser.

    Bad input raises `gr.Error`, which Gradio shows on the page as a message instead of a traceback.
    """

    def __init__(self, model: UniModal):
        self.model = model

    def caption(self, image: Image.Image | None) -> str:
        """Caption one uploaded image (greedy, as `unimodal caption`)."""
        image = _require_image(image)
        return _friendly(lambda: self.model.caption([image], max_new_tokens=CAPTION_TOKENS))[0]

    def answer(self, image: Image.Image | None, question: str | None) -> str:
        """Answer one question about one uploaded image (greedy, as `unimodal answer`)."""
        image = _require_image(image)
        question = (question or "").strip()
        if not question:
            raise _user_error("Type a question about the image first.")
        return _friendly(lambda: self.model.answer([image], [question], max_new_tokens=ANSWER_TOKENS))[0]

    def generate(self, prompt: str | None, num_steps: float | None, guidance_scale: float | None,
                 seed: float | None, progress: gr.Progress = gr.Progress()) -> Image.Image:  # noqa: B008
        """Generate one image; `progress` (filled in by Gradio) moves once per sampling step."""
        prompt = (prompt or "").strip()
        num_steps = _whole_number(num_steps, "Number of steps", 1, MAX_STEPS)
        seed = _whole_number(seed, "Seed", 0, MAX_SEED)
        if guidance_scale is None or not 1.0 <= guidance_scale <= MAX_GUIDANCE:
            raise _user_error(f"Guidance scale must be between 1 (no guidance) and {MAX_GUIDANCE:g}, got {guidance_scale}.")
        if not prompt:
            gr.Warning("The prompt is empty: the image is sampled without any text.")
        progress((0, num_steps), desc="sampling", unit="steps")

        def on_step(step: int, total: int) -> None:
            progress((step, total), desc="sampling", unit="steps")

        return _friendly(lambda: self.model.generate([prompt], num_steps=num_steps, guidance_scale=float(guidance_scale),
                                                     seed=seed, callback=on_step))[0]


def _user_error(message: str) -> gr.Error:
    """A message for the page; a user's mistake needs no traceback in the server's log."""
    return gr.Error(message, print_exception=False)


def _require_image(image: Image.Image | None) -> Image.Image:
    if image is None:
        raise _user_error("Upload an image first.")
    return image


def _whole_number(value: float | None, name: str, low: int, high: int) -> int:
    """A number field's value as an int in [low, high], or a message saying what is allowed."""
    if value is None or not math.isfinite(value) or value != int(value) or not low <= value <= high:
        raise _user_error(f"{name} must be a whole number from {low} to {high}, got {value}.")
    return int(value)


def _friendly(call):
    """Run an API call; its user errors (worded by the API) become page messages."""
    try:
        return call()
    except (ValueError, TypeError) as error:
        raise _user_error(str(error)) from error


# ----------------------------------------------------------------------------- the page
def _caption_tab(handlers: Handlers) -> None:
    with gr.Row():
        image = gr.Image(type="pil", sources=["upload", "clipboard"], label="Image", elem_id="caption-image")
        with gr.Column():
            caption = gr.Textbox(label="Caption", interactive=False, elem_id="caption-output")
            button = gr.Button("Caption", variant="primary", elem_id="caption-button")
    button.click(handlers.caption, inputs=image, outputs=caption, api_name="caption", **ONE_AT_A_TIME)


def _answer_tab(handlers: Handlers) -> None:
    with gr.Row():
        image = gr.Image(type="pil", sources=["upload", "clipboard"], label="Image", elem_id="answer-image")
        with gr.Column():
            question = gr.Textbox(label="Question", placeholder="what colour is the circle?",
                                  elem_id="answer-question")
            answer = gr.Textbox(label="Answer", interactive=False, elem_id="answer-output")
            button = gr.Button("Answer", variant="primary", elem_id="answer-button")
    inputs = [image, question]
    button.click(handlers.answer, inputs=inputs, outputs=answer, api_name="answer", **ONE_AT_A_TIME)
    question.submit(handlers.answer, inputs=inputs, outputs=answer, **ONE_AT_A_TIME)


def _generate_tab(handlers: Handlers) -> None:
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(label="Prompt", placeholder="a large red circle at the top left",
                                elem_id="generate-prompt")
            num_steps = gr.Slider(1, MAX_STEPS, value=DEFAULT_STEPS, step=1, label="Number of steps",
                                  elem_id="generate-steps")
            guidance_scale = gr.Slider(1.0, MAX_GUIDANCE, value=DEFAULT_GUIDANCE, step=0.5,
                                       label="Guidance scale (1 = none)", elem_id="generate-guidance")
            seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", elem_id="generate-seed")
            button = gr.Button("Generate", variant="primary", elem_id="generate-button")
        image = gr.Image(type="pil", format="png", label="Image", interactive=False, height=320,
                         elem_id="generate-image")  # png: the page shows the model's exact pixels
    inputs = [prompt, num_steps, guidance_scale, seed]
    button.click(handlers.generate, inputs=inputs, outputs=image, api_name="generate", **ONE_AT_A_TIME)
    prompt.submit(handlers.generate, inputs=inputs, outputs=image, **ONE_AT_A_TIME)


# One entry per tab, in page order. A future "Clip" tab (video clips) is one more (label, builder) pair.
TABS = (("Caption", _caption_tab), ("Answer", _answer_tab), ("Generate", _generate_tab))


def build_demo(model: UniModal) -> gr.Blocks:
    """The page for `model`: one tab per entry of `TABS`. Launch it with `serve` (or `.launch()`)."""
    handlers = Handlers(model)
    with gr.Blocks(title="unimodal", analytics_enabled=False) as demo:
        gr.Markdown("# unimodal\nOne transformer that captions, answers questions about and generates images.")
        with gr.Tabs():
            for label, build_tab in TABS:
                with gr.Tab(label, id=label.lower()):
                    build_tab(handlers)
    return demo


def serve(model: UniModal, host: str = "127.0.0.1", port: int = 7860, block: bool = True,
          quiet: bool = False) -> gr.Blocks:
    """Serve the page at http://host:port (never through a share link).

    With `block` (the CLI) this returns when the server stops (Ctrl+C); without it the server runs
    in a background thread and the caller stops it with `.close()` on the returned Blocks.
    """
    demo = build_demo(model)
    demo.queue()  # progress bars and gr.Warning messages need the queue
    # quiet: Gradio's own banner suggests share=True, which this demo never uses; print the address instead.
    demo.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=True, quiet=True,
                ssr_mode=False, css=CSS, footer_links=[])
    if not quiet:
        print(f"unimodal demo: open {demo.local_url} (Ctrl+C stops it)", flush=True)
    if block:
        demo.block_thread()  # returns on Ctrl+C, after closing the server
    return demo

"""The `unimodal` command: caption, answer and generate with an exported model folder.

    unimodal caption cat.png dog.jpg --model runs/tiny/export
    unimodal answer cat.png "what colour is the cat?" --model runs/tiny/export
    unimodal generate "a red circle" "a blue square" --model runs/tiny/export --out grid.png --out-dir images/
    unimodal generate "a red circle moves from left to right" --num-frames 8 --model runs/tiny_video/export --out clip.gif
    unimodal caption clip.gif frames.mp4 --model runs/tiny_video/export        (clips: GIF, or MP4/WebM with PyAV)
    unimodal demo --model runs/tiny/export [--port 7860] [--host 127.0.0.1]    (needs the `demo` extra)

Bad arguments (a missing model folder or image, an unknown scheduler, ...) print a message and exit
with status 2, like any argparse error.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .extras import MissingExtraError, require_extra, run_entry_point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unimodal", description="Caption, answer questions about and generate "
                                     "images with an exported unimodal model.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", required=True, type=Path, metavar="FOLDER",
                        help="exported model folder (config.json, model.safetensors, tokenizer.model, ...)")
    common.add_argument("--device", default="cpu", help="torch device to run on, e.g. cpu or cuda (default: cpu)")

    text = argparse.ArgumentParser(add_help=False)
    text.add_argument("--max-new-tokens", type=int, default=None, help="longest reply in tokens")
    text.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    text.add_argument("--top-p", type=float, default=1.0)
    text.add_argument("--seed", type=int, default=0)

    caption = commands.add_parser("caption", parents=[common, text], help="describe images",
                                  description="Print one line per image: PATH<TAB>caption.")
    caption.add_argument("images", nargs="+", type=Path, metavar="IMAGE")

    answer = commands.add_parser("answer", parents=[common, text], help="answer a question about images",
                                 description="Ask QUESTION about each IMAGE; print one line per image: "
                                             "PATH<TAB>answer.")
    answer.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    answer.add_argument("question", metavar="QUESTION")

    generate = commands.add_parser("generate", parents=[common], help="generate images from prompts",
                                   description="Generate one image per prompt; save a labelled grid (--out) "
                                               "and/or each image (--out-dir).")
    generate.add_argument("prompts", nargs="+", metavar="PROMPT")
    generate.add_argument("--out", type=Path, help="PNG file for a grid of the images labelled with their prompts")
    generate.add_argument("--out-dir", type=Path, help="folder to save each image in (NNN_prompt.png)")
    generate.add_argument("--num-steps", type=int, default=25)
    generate.add_argument("--guidance-scale", type=float, default=3.0, help="1 disables classifier-free guidance")
    generate.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i")
    generate.add_argument("--scheduler", default=None,
                          help="euler or dpmsolver++ (flow models); ddim, ddpm or dpmsolver++ (ddpm models)")
    generate.add_argument("--height", type=int, default=None,
                          help="pixels, a multiple of the model's pixels per patch (4 for tiny); default: its image size")
    generate.add_argument("--width", type=int, default=None,
                          help="pixels, a multiple of the model's pixels per patch (4 for tiny); default: its image size")
    generate.add_argument("--cell-size", type=int, default=128, help="pixels per image in the grid")
    generate.add_argument("--num-frames", type=int, default=None,
                          help="make clips of this many frames (e.g. 8) instead of images: --out is then an animated "
                               "grid (.gif, or .mp4/.webm with PyAV) and --out-dir gets one GIF per prompt")
    generate.add_argument("--fps", type=float, default=10.0, help="frames per second of the saved clips")
    demo = commands.add_parser("demo", parents=[common], help="serve a web page to try the model",
                               description="Serve a Gradio page with Caption, Answer and Generate tabs "
                                           "(needs the demo extra: pip install 'unimodal[demo]'). Stop it with Ctrl+C.")
    demo.add_argument("--port", type=int, default=7860, help="TCP port (default: 7860)")
    demo.add_argument("--host", default="127.0.0.1",
                      help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for the network)")
    for command_parser in (caption, answer, generate, demo):  # errors print the usage of their own command
        command_parser.set_defaults(command_parser=command_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    parser = args.command_parser
    if args.command == "generate" and args.out is None and args.out_dir is None:
        parser.error("generate needs --out GRID.png and/or --out-dir FOLDER to save the images")
    clip_out = getattr(args, "num_frames", None) is not None
    if getattr(args, "out", None) is not None:
        if clip_out and args.out.suffix.lower().lstrip(".") not in ("gif", "mp4", "webm"):
            parser.error(f"--out {args.out}: with --num-frames, name the clip file .gif (or .mp4/.webm with PyAV)")
        if not clip_out and args.out.suffix.lower() not in _image_extensions():
            parser.error(f"--out {args.out}: name the grid file with an image extension such as .png")
    if args.command == "demo" and not 1 <= args.port <= 65535:
        parser.error(f"--port {args.port}: choose a TCP port from 1 to 65535")
    if args.command == "demo":  # before the model loads
        try:
            require_extra("demo", "gradio", feature="unimodal demo")
        except MissingExtraError as error:
            parser.error(str(error))
    if not args.model.is_dir():
        parser.error(f"--model {args.model}: no such folder (pass an exported model folder)")
    for path in getattr(args, "images", []):
        _check_media(parser, path)
    images = list(getattr(args, "images", []))  # paths: the API decodes them as the training reader does

    import torch

    from .api import UniModal  # after argument checks: `unimodal --help` stays fast

    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        parser.error(f"--device {args.device}: {error}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here; use --device cpu")
    try:
        model = UniModal.from_pretrained(args.model, device=device)
        if args.command == "caption":
            _print_replies(args.images, model.caption(images, **_text_options(args, 32)))
        elif args.command == "answer":
            questions = [args.question] * len(images)
            _print_replies(args.images, model.answer(images, questions, **_text_options(args, 16)))
        elif args.command == "generate":
            _generate(model, args)
        else:
            _serve(parser, model, args)
    except (ValueError, TypeError, FileNotFoundError) as error:  # user errors, worded by the API
        parser.error(str(error))
    return 0


def _check_media(parser: argparse.ArgumentParser, path: Path) -> None:
    """Fail before the model loads if an image cannot be decoded (by the project's one input rule);
    a video file (by its suffix) is left to the API, which says what it cannot read."""
    from .images import open_image
    from .video import VIDEO_SUFFIXES

    if path.suffix.lower().lstrip(".") in VIDEO_SUFFIXES:
        if not path.is_file():
            parser.error(f"clip {path}: no such file")
        return
    try:
        open_image(path)
    except FileNotFoundError:
        parser.error(f"image {path}: no such file")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        parser.error(f"image {path}: cannot read it ({error})")


def _image_extensions() -> set[str]:
    return set(Image.registered_extensions())


def _text_options(args: argparse.Namespace, default_tokens: int) -> dict:
    max_new_tokens = args.max_new_tokens if args.max_new_tokens is not None else default_tokens
    return dict(max_new_tokens=max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)


def _print_replies(paths: list[Path], replies: list[str]) -> None:
    for path, reply in zip(paths, replies):
        print(f"{path}\t{reply}")


def _generate(model, args: argparse.Namespace) -> None:
    from .images import image_grid

    images = model.generate(args.prompts, num_steps=args.num_steps, guidance_scale=args.guidance_scale,
                            seed=args.seed, height=args.height, width=args.width, scheduler=args.scheduler,
                            progress=sys.stderr.isatty(), num_frames=args.num_frames)
    if args.num_frames is not None:
        _save_clips(images, args)
        return
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for index, (image, prompt) in enumerate(zip(images, args.prompts)):
            path = args.out_dir / f"{index:03d}_{_slug(prompt)}.png"
            image.save(path)
            print(path)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        image_grid(images, labels=args.prompts, cell_size=args.cell_size).save(args.out)
        print(args.out)


def _save_clips(clips: list, args: argparse.Namespace) -> None:
    """One GIF per prompt into --out-dir; --out: an animated grid, frame k showing every prompt's frame k."""
    from .images import image_grid
    from .video import save_video

    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for index, (clip, prompt) in enumerate(zip(clips, args.prompts)):
            print(save_video(clip, args.out_dir / f"{index:03d}_{_slug(prompt)}.gif", fps=args.fps))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        frames = [image_grid([clip[k] for clip in clips], labels=args.prompts, cell_size=args.cell_size)
                  for k in range(len(clips[0]))]
        print(save_video(frames, args.out, fps=args.fps))


def _serve(parser: argparse.ArgumentParser, model, args: argparse.Namespace) -> None:
    from .demo import serve  # only here: gradio is an optional extra the rest of the CLI never loads

    try:
        serve(model, host=args.host, port=args.port)
    except OSError as error:  # the port is taken or the address is not this machine's
        parser.error(f"cannot serve on {args.host}:{args.port} ({type(error).__name__}): the port is taken or the "
                     "address is not one of this machine's; choose another --port or --host")


def _slug(text: str, max_chars: int = 40) -> str:
    """A file-name-safe version of a prompt: 'A red circle!' -> 'a-red-circle'."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_chars].rstrip("-") or "image"


def train_main() -> int:
    """The `unimodal-train` console script (`python -m unimodal.training`); needs the `train` extra."""
    return run_entry_point("unimodal.training.train")


def eval_main() -> int:
    """The `unimodal-eval` console script (`python -m unimodal.evaluation`); needs the `eval` extra."""
    return run_entry_point("unimodal.evaluation.run")


if __name__ == "__main__":
    sys.exit(main())

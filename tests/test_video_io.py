"""Video clips in and out (`unimodal.video`): the clip sampling rule, GIF / MP4 / .npy round trips, model
tensors, and clips in webdataset shards (decode_sample, the `videos` shard writer)."""

import csv
import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from unimodal.data import write_shards
from unimodal.data.reader import iter_samples
from unimodal.data.samples import decode_sample
from unimodal.data.skips import SkipCounter
from unimodal.data.sources import ShardSample
from unimodal.images import ImageGeometry, to_model_tensor
from unimodal.video import (
    FRAMES_SUFFIX,
    ShortClipError,
    VideoSampling,
    as_clip_frames,
    encode_gif,
    read_frames_npy,
    read_video,
    sample_indices,
    save_video,
    to_model_clip,
)


def random_frames(count: int, height: int = 12, width: int = 20, seed: int = 0) -> np.ndarray:
    """(count, H, W, 3) uint8 noise; 12 × 20 = 240 pixels, so every frame fits a GIF palette exactly."""
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def level_frames(count: int, height: int = 32, width: int = 48) -> np.ndarray:
    """Frame i is a flat grey of level 8·i with a red band: robust to lossy codecs, its index readable back."""
    frames = np.broadcast_to((np.arange(count) * 8).astype(np.uint8)[:, None, None, None],
                             (count, height, width, 3)).copy()
    frames[:, : height // 4, :, 0] = 200
    return frames


def level_index(frame: np.ndarray) -> int:
    return int(round(frame[frame.shape[0] // 4:, :, 1].mean() / 8))


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


# ---- GIF, MP4 and .npy round trips ----
def test_gif_round_trip_is_exact_even_for_merged_and_still_frames(tmp_path):
    frames = random_frames(8)
    path = save_video(frames, tmp_path / "clip.gif")
    assert np.array_equal(read_video(path, 8), frames)
    assert np.array_equal(read_video(path.read_bytes(), None), frames)  # bytes, every frame
    # Identical consecutive frames: Pillow stores [a, a, b, c, c, c, d, e] as 5 frames; time sampling restores 8.
    a, b, c, d, e = random_frames(5, seed=1)
    repeated = np.stack([a, a, b, c, c, c, d, e])
    data = encode_gif(repeated)
    assert Image.open(io.BytesIO(data)).n_frames == 5
    assert np.array_equal(read_video(data, 8), repeated)
    assert np.array_equal(read_video(data, None), repeated)
    # A still clip: 8 identical frames at 100 ms become one 800 ms GIF frame, read back as 8 frames at 10 fps.
    still = np.stack([a] * 8)
    data = encode_gif(still)
    with Image.open(io.BytesIO(data)) as image:
        assert getattr(image, "n_frames", 1) == 1 and image.info["duration"] == 800
    assert np.array_equal(read_video(data, 8, fps=10), still)
    assert [np.asarray(f).tolist() for f in as_clip_frames(data)] == still.tolist()
    # A float (F, 3, H, W) tensor in [0, 1] is written as its rounded uint8 frames.
    floats = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    assert np.array_equal(read_video(save_video(floats, tmp_path / "float.gif"), 8), frames)


def test_mp4_and_webm_round_trips_are_close_with_every_frame(tmp_path):
    pytest.importorskip("av")
    frames = level_frames(12)
    for suffix in ("mp4", "webm"):
        back = read_video(save_video(frames, tmp_path / f"clip.{suffix}"), None)
        assert back.shape == frames.shape and back.dtype == np.uint8
        error = np.abs(back.astype(int) - frames.astype(int))
        assert error.mean() < 3 and error.max() < 40, (suffix, error.mean(), error.max())
        assert [level_index(f) for f in back] == list(range(12))
    # yuv420p needs even sides: odd ones are padded by one edge row / column.
    odd = save_video(frames[:, :31, :47], tmp_path / "odd.mp4")
    assert read_video(odd, 8).shape == (8, 32, 48, 3)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary left behind


def test_npy_frames_round_trip_window_and_errors():
    frames = random_frames(12)
    assert np.array_equal(read_frames_npy(npy_bytes(frames), None), frames)
    assert np.array_equal(read_frames_npy(npy_bytes(frames), 8), frames[2:10])  # the centred window
    grey = read_frames_npy(npy_bytes(frames[..., 0]), 12)
    assert grey.shape == (12, 12, 20, 3) and np.array_equal(grey[..., 2], frames[..., 0])
    with pytest.raises(ShortClipError, match="holds 12 frames, fewer than the 13"):
        read_frames_npy(npy_bytes(frames), 13)
    with pytest.raises(ValueError, match="uint8"):
        read_frames_npy(npy_bytes(frames.astype(np.float32)), 8)
    with pytest.raises(ValueError, match="shape"):
        read_frames_npy(npy_bytes(frames[..., :2]), 8)
    with pytest.raises(ValueError, match="cannot load"):
        read_frames_npy(npy_bytes(np.array([{"a": 1}], dtype=object)), 1)  # pickles are refused
    with pytest.raises(ValueError, match="cannot load"):
        read_frames_npy(b"not an npy file", 1)


# ---- the sampling rule ----
def test_sampling_takes_the_centred_window_by_time(tmp_path):
    times = [i / 10 for i in range(20)]
    assert sample_indices(times, 2.0, 8, 10) == list(range(6, 14))
    # Sample-and-hold: a frame lasting 0.5 s is taken for every step that falls within it.
    assert sample_indices([0.0, 0.5, 0.6], 0.7, 7, 10) == [0, 0, 0, 0, 0, 1, 2]
    frames = random_frames(20)
    assert np.array_equal(read_video(encode_gif(frames), 8), frames[6:14])
    # At 5 fps a 10 fps clip gives every second frame of its centred 1.6 s.
    assert np.array_equal(read_video(encode_gif(frames), 8, fps=5), frames[2:18:2])


def test_a_30_fps_clip_sampled_at_10_fps_takes_every_third_frame(tmp_path):
    pytest.importorskip("av")
    path = save_video(level_frames(30), tmp_path / "thirty.mp4", fps=30)
    # 1 s of clip, 0.8 s window from 0.1 s: frames 3, 6, ..., 24.
    assert [level_index(f) for f in read_video(path, 8, fps=10)] == list(range(3, 27, 3))


def test_short_clip_and_corrupt_bytes():
    with pytest.raises(ShortClipError, match=r"lasts 0\.500 s, shorter than the 0\.800 s") as raised:
        read_video(encode_gif(random_frames(5)), 8)
    assert isinstance(raised.value, ValueError)
    with pytest.raises(ValueError, match="could not decode"):
        read_video(b"GIF89a" + b"\x00garbage" * 20, 8)
    gif = encode_gif(random_frames(8))
    with pytest.raises(ValueError, match="could not decode"):
        read_video(gif[: len(gif) // 2], 8)  # truncated
    pytest.importorskip("av")
    with pytest.raises(ValueError, match="could not decode the video"):
        read_video(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50, 8, suffix="mp4")


# ---- model tensors and the Python API's clip forms ----
def test_to_model_clip_sizes_every_frame_like_an_image():
    frames = random_frames(4)
    clip = to_model_clip(frames, 16)
    assert clip.shape == (3, 4, 16, 16) and clip.dtype == torch.float32
    assert torch.equal(clip[:, 2], to_model_tensor(frames[2], 16))
    assert torch.equal(to_model_clip([Image.fromarray(f) for f in frames], 16), clip)
    native = to_model_clip(frames, ImageGeometry(16, "native", 4))
    assert native.shape[:2] == (3, 4) and native.shape[2:] == to_model_tensor(frames[0], ImageGeometry(16, "native", 4)).shape[1:]
    with pytest.raises(ValueError, match="one size"):
        to_model_clip([frames[0], frames[1][:10]], 16)
    with pytest.raises(ValueError, match="at least one frame"):
        to_model_clip([], 16)
    with pytest.raises(TypeError, match="list of frames"):
        to_model_clip("clip.gif", 16)


def test_as_clip_frames_accepts_the_api_forms(tmp_path):
    frames = random_frames(3)
    expected = frames.tolist()

    def as_lists(clip):
        return [np.asarray(frame).tolist() for frame in as_clip_frames(clip)]

    channels_first = torch.from_numpy(frames).permute(0, 3, 1, 2)
    assert as_lists(frames) == as_lists(channels_first) == as_lists(channels_first.float() / 255) == expected
    assert as_lists(list(frames)) == as_lists([Image.fromarray(f) for f in frames]) == expected
    paths = []
    for index, frame in enumerate(frames):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(frame).save(paths[-1])
    assert as_lists(paths) == expected
    assert as_lists(save_video(frames, tmp_path / "clip.gif")) == expected
    transparent = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert as_clip_frames([transparent])[0].getpixel((0, 0)) == (255, 255, 255)  # alpha on white, as for images
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        as_clip_frames(channels_first.float())
    with pytest.raises(ValueError, match="shape"):
        as_clip_frames(frames[0])
    with pytest.raises(TypeError, match="uint8 or float"):
        as_clip_frames(frames.astype(np.int32))
    with pytest.raises(TypeError, match="a clip must be"):
        as_clip_frames(42)
    with pytest.raises(ValueError, match=r"\.gif, \.mp4, \.webm, \.mkv"):
        save_video(frames, tmp_path / "clip.png")


# ---- clips in shards ----
def test_shard_clips_decode_to_model_clips_and_bad_ones_are_counted(tmp_path):
    pytest.importorskip("av")
    gif_frames, mp4_frames, npy_frames = random_frames(16, seed=2), level_frames(16), random_frames(12, seed=3)
    save_video(mp4_frames, tmp_path / "clip.mp4")
    mp4 = (tmp_path / "clip.mp4").read_bytes()
    image = io.BytesIO()
    Image.fromarray(random_frames(1)[0]).save(image, format="PNG")
    samples = [
        ShardSample("gif", encode_gif(gif_frames), "gif", "a gif clip"),
        ShardSample("mp4", mp4, "mp4", "an mp4 clip"),
        ShardSample("npy", npy_bytes(npy_frames), FRAMES_SUFFIX, "pre-decoded frames"),
        ShardSample("corrupt", b"\x1aE\xdf\xa3 not really a webm" * 10, "webm", "a corrupt clip"),
        ShardSample("short", encode_gif(random_frames(4)), "gif", "a short clip"),
        ShardSample("image", image.getvalue(), "png", "an image"),
    ]
    summary = write_shards.write_shards(samples, tmp_path / "shards", progress=False)
    with tarfile.open(summary.shards[0]) as tar:
        assert "npy.frames.npy" in tar.getnames() and "mp4.mp4" in tar.getnames()
    counter = SkipCounter()
    decoded = {s.key: s for s in iter_samples(summary.pattern, 16, counter=counter, video=VideoSampling(8))}
    assert sorted(decoded) == ["gif", "image", "mp4", "npy"]
    assert counter.as_dict() == {"corrupt_video": 1, "short_clip": 1}
    assert torch.equal(decoded["gif"].image, to_model_clip(gif_frames[4:12], 16))
    assert torch.equal(decoded["npy"].image, to_model_clip(npy_frames[2:10], 16))
    assert torch.equal(decoded["mp4"].image, to_model_clip(read_video(mp4, 8), 16))
    assert (decoded["mp4"].image - to_model_clip(mp4_frames[4:12], 16)).abs().mean() < 0.03  # lossy
    assert decoded["image"].image.shape == (3, 16, 16) and decoded["gif"].caption == "a gif clip"

    # Without `video`, VideoSampling() (8 frames at 10 fps); a sample with an image and a clip is its clip.
    raw = {"__key__": "both", "__url__": "memory", "png": image.getvalue(), "gif": encode_gif(gif_frames[:10]),
           "txt": b"both"}
    both = decode_sample(raw, 16, SkipCounter())
    assert torch.equal(both.image, to_model_clip(gif_frames[1:9], 16))
    missing = SkipCounter()
    assert decode_sample({"__key__": "none", "__url__": "memory", "txt": b"nothing"}, 16, missing) is None
    assert missing.as_dict() == {"missing_image": 1}
    with pytest.raises(ValueError, match="positive int"):
        VideoSampling(0)


def test_videos_subcommand_writes_clips_byte_for_byte(tmp_path, capsys):
    pytest.importorskip("av")
    folder = tmp_path / "videos"
    folder.mkdir()
    save_video(random_frames(10, seed=4), folder / "one.GIF")
    save_video(level_frames(10), folder / "two.mp4")
    (folder / "three.npy").write_bytes(npy_bytes(random_frames(9, seed=5)))
    (folder / "floats.npy").write_bytes(npy_bytes(np.zeros((9, 4, 4, 3), np.float32)))
    (folder / "notes.txt").write_text("not a clip")
    rows = [("one.GIF", "a gif"), ("two.mp4", "an mp4"), ("three.npy", "frames"), ("floats.npy", "float frames"),
            ("notes.txt", "text"), ("missing.mp4", "gone"), ("two.mp4", "")]
    with open(tmp_path / "captions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video", "caption", "tag"])
        writer.writerows((name, caption, f"t{i}") for i, (name, caption) in enumerate(rows))
    out = tmp_path / "shards"
    assert write_shards.main(["videos", "--out", str(out), "--videos", str(folder), "--captions",
                              str(tmp_path / "captions.csv"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 3 samples" in printed and "skipped 4" in printed
    with tarfile.open(next(out.glob("*.tar"))) as tar:
        stored = {member.name: tar.extractfile(member).read() for member in tar.getmembers()}
    assert stored["000000000.gif"] == (folder / "one.GIF").read_bytes()  # byte for byte, suffix lowercased
    assert stored["000000001.mp4"] == (folder / "two.mp4").read_bytes()
    assert stored["000000002.frames.npy"] == (folder / "three.npy").read_bytes()
    counter = SkipCounter()
    decoded = list(iter_samples(str(out), 8, counter=counter, video=VideoSampling(8)))
    assert [s.image.shape for s in decoded] == [(3, 8, 8, 8)] * 3 and not counter.as_dict()
    assert decoded[1].metadata == {"source": "two.mp4", "tag": "t1"}
    with pytest.raises(ValueError, match="no video field 'clip'"):
        write_shards.main(["videos", "--out", str(tmp_path / "x"), "--videos", str(folder), "--captions",
                           str(tmp_path / "captions.csv"), "--video-field", "clip"])


def test_without_pyav_gifs_still_work_and_other_clips_say_what_to_install(monkeypatch):
    import unimodal.extras

    real = unimodal.extras.find_spec
    monkeypatch.setattr(unimodal.extras, "find_spec", lambda name: None if name == "av" else real(name))
    frames = random_frames(8)
    assert np.array_equal(read_video(encode_gif(frames), 8), frames)
    with pytest.raises(ImportError, match=r"pip install 'unimodal\[video\]'"):
        read_video(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64, 8, suffix="mp4")
    raw = {"__key__": "k", "__url__": "memory", "mp4": b"\x00\x00\x00\x18ftypmp42", "txt": b"a clip"}
    with pytest.raises(ImportError, match="unimodal"):  # a missing extra is not a corrupt sample
        decode_sample(raw, 16, SkipCounter())

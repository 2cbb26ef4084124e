"""CLIP (reference_torch.clip), its tokenizer and the prompts of reference_torch.prompting.

The checks that pin OpenAI's conventions use values written here from their definition:
token ids of OpenAI's tokenizer for a known sentence (with the real merge file, skipped
without it), the key names and shapes of OpenAI's ViT checkpoints (built on the meta
device: nothing big is allocated), and merges worked out by hand for a small corpus.
"""
import os
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from reference_torch.clip import CLIP, CLIP_MEAN, CLIP_STD, architecture, build_model, load_clip, preprocess  # noqa: E402
from reference_torch.clip_tokenizer import CLIPTokenizer, learn_merges  # noqa: E402
from reference_torch.prompting import (DeepPrompter, FixedPatchPrompter, PadPrompter, PromptCLIP,  # noqa: E402
                                       RandomPatchPrompter)

pytestmark = pytest.mark.usefixtures("torch_one_thread")
SHARED = Path(os.environ.get("MINIDL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MERGES = SHARED / "clip" / "bpe_simple_vocab_16e6.txt.gz"


# ------------------------------------------------------------------ tokenizer
@pytest.fixture(scope="module")
def openai_tokenizer():
    if not MERGES.is_file():
        pytest.skip(f"OpenAI's merge file is not at {MERGES}")
    return CLIPTokenizer.from_file(MERGES)


def test_openai_token_ids(openai_tokenizer):
    tokens = openai_tokenizer.tokenize(["a photo of a cat", "A photo of a CAT"])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.long
    for row in tokens:  # start, "a</w>" "photo</w>" "of</w>" "a</w>" "cat</w>", end, padding
        assert row.tolist() == [49406, 320, 1125, 539, 320, 2368, 49407] + [0] * 70
    assert openai_tokenizer.vocab_size == 49408


def test_round_trip_and_length(openai_tokenizer):
    text = "this is a photo of 2 dogs on the beach"
    assert openai_tokenizer.decode(openai_tokenizer.encode(text)) == text
    long_text = " ".join(["cat"] * 80)
    with pytest.raises(ValueError, match="cat cat"):
        openai_tokenizer.tokenize(long_text)
    cut = openai_tokenizer.tokenize(long_text, truncate=True)[0]
    assert cut.tolist() == [49406] + [2368] * 75 + [49407]


def test_learned_merges_by_hand():
    # Sennrich et al.'s corpus: low x5, lower x2, newest x6, widest x3; with </w> on each last
    # letter, the pair counts are (e, s) 9, (s, t</w>) 9, (w, e) 8, (l, o) 7, ...: the tie at 9
    # goes to the pair that sorts first, then (es, t</w>) has 9, then (l, o) 7.
    corpus = ["low " * 5, "lower " * 2, "newest " * 6, "widest " * 3]
    merges = learn_merges(corpus, 3)
    assert merges == [("e", "s"), ("es", "t</w>"), ("l", "o")]
    tokenizer = CLIPTokenizer(merges)
    assert tokenizer.vocab_size == 256 * 2 + 3 + 2
    # "lowest" -> lo w est</w>: the merges' ids follow the 512 byte tokens ("lo" third, "est</w>"
    # second); "w" is byte character 86 (printable bytes from "!" on come first)
    assert tokenizer.encode("lowest") == [512 + 2, ord("w") - ord("!"), 512 + 1]
    assert tokenizer.decode(tokenizer.encode("lowest newest")) == "lowest newest"
    assert tokenizer.tokenize("low", context_length=5).tolist() == [[515, 512 + 2, ord("w") - ord("!") + 256, 516, 0]]


# ------------------------------------------------------------- the layout
def openai_layout(embed_dim, image_resolution, vision_layers, vision_width, patch, context_length, vocab_size,
                  text_width, text_layers):
    """{key: shape} of OpenAI's ViT CLIP checkpoints, from the architecture's definition."""
    def blocks(prefix, width, layers):
        keys = {}
        for i in range(layers):
            p = f"{prefix}transformer.resblocks.{i}."
            keys.update({p + "attn.in_proj_weight": (3 * width, width), p + "attn.in_proj_bias": (3 * width,),
                         p + "attn.out_proj.weight": (width, width), p + "attn.out_proj.bias": (width,),
                         p + "ln_1.weight": (width,), p + "ln_1.bias": (width,),
                         p + "mlp.c_fc.weight": (4 * width, width), p + "mlp.c_fc.bias": (4 * width,),
                         p + "mlp.c_proj.weight": (width, 4 * width), p + "mlp.c_proj.bias": (width,),
                         p + "ln_2.weight": (width,), p + "ln_2.bias": (width,)})
        return keys
    grid = image_resolution // patch
    return {"positional_embedding": (context_length, text_width), "text_projection": (text_width, embed_dim),
            "logit_scale": (), "visual.class_embedding": (vision_width,),
            "visual.positional_embedding": (grid * grid + 1, vision_width), "visual.proj": (vision_width, embed_dim),
            "visual.conv1.weight": (vision_width, 3, patch, patch), "visual.ln_pre.weight": (vision_width,),
            "visual.ln_pre.bias": (vision_width,), **blocks("visual.", vision_width, vision_layers),
            "visual.ln_post.weight": (vision_width,), "visual.ln_post.bias": (vision_width,),
            **blocks("", text_width, text_layers), "token_embedding.weight": (vocab_size, text_width),
            "ln_final.weight": (text_width,), "ln_final.bias": (text_width,)}


VIT_B_32 = dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12)


def layout_of(args):
    return openai_layout(args["embed_dim"], args["image_resolution"], args["vision_layers"], args["vision_width"],
                         args["vision_patch_size"], args["context_length"], args["vocab_size"],
                         args["transformer_width"], args["transformer_layers"])


def test_vit_b_32_layout():
    expected = layout_of(VIT_B_32)
    assert len(expected) == 302 and sum(torch.Size(s).numel() for s in expected.values()) == 151_277_313
    with torch.device("meta"):
        model = CLIP(**VIT_B_32)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    # the architecture read off the shapes alone, also for ViT-B/16 and ViT-L/14
    for args in (VIT_B_32, {**VIT_B_32, "vision_patch_size": 16},
                 {**VIT_B_32, "embed_dim": 768, "vision_layers": 24, "vision_width": 1024, "vision_patch_size": 14,
                  "transformer_width": 768, "transformer_heads": 12}):
        shapes = {k: torch.empty(s, device="meta") for k, s in layout_of(args).items()}
        assert architecture(shapes) == args


SMALL = dict(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8,
             context_length=16, vocab_size=600, transformer_width=64, transformer_heads=1, transformer_layers=1)


def random_state_dict(args, seed=0):
    generator = torch.Generator().manual_seed(seed)
    state = {k: 0.05 * torch.randn(s, generator=generator) for k, s in layout_of(args).items()}
    state["logit_scale"] = torch.tensor(4.6)
    return state


def test_small_state_dict_loads_strictly(tmp_path):
    state = random_state_dict(SMALL)
    # as OpenAI's TorchScript models carry them, in half precision
    half = {**{k: v.half() for k, v in state.items()}, "input_resolution": torch.tensor(32),
            "context_length": torch.tensor(16), "vocab_size": torch.tensor(600)}
    torch.save(half, tmp_path / "small.pt")
    model = load_clip(tmp_path / "small.pt")
    loaded = model.state_dict()
    assert list(loaded) == list(layout_of(SMALL))
    assert all(loaded[k].dtype == torch.float32 and torch.equal(loaded[k], state[k].half().float()) for k in state)
    images, tokens = torch.randn(3, 3, 32, 32), torch.tensor([[598, 5, 7, 599] + [0] * 12, [598, 9, 599] + [0] * 13])
    per_image, per_text = model(images, tokens)
    assert per_image.shape == (3, 2) and torch.equal(per_text, per_image.t())
    with pytest.raises(RuntimeError, match="Missing key"):
        build_model({k: v for k, v in state.items() if k != "visual.ln_post.bias"})


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_foreign_files_refused(tmp_path):
    scripted = tmp_path / "openai.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(scripted))
    assert zipfile.is_zipfile(scripted)
    with pytest.raises(ValueError, match="TorchScript archive.*state_dict"):
        load_clip(scripted)
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read it"):
        load_clip(tmp_path / "text.pt")
    with pytest.raises(ValueError, match="ResNet"):
        build_model({"visual.layer1.0.conv1.weight": torch.zeros(1)})


def test_preprocess():
    grey = torch.full((2, 3, 40, 60), 0.5)
    grey[..., :, :10] = 0.0  # left border: cut off by the centre crop of 40 x 40
    out = preprocess(grey, 32)
    assert out.shape == (2, 3, 32, 32)
    expected = (0.5 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(out[..., 4:-4, 4:-4], expected.view(1, 3, 1, 1).expand(2, 3, 24, 24), atol=1e-5)
    as_bytes = preprocess((grey * 255).round().to(torch.uint8), 40)  # no resize: the crop of columns 10 to 49
    assert torch.allclose(as_bytes, expected.view(1, 3, 1, 1).expand(2, 3, 40, 40), atol=0.01)


# ------------------------------------------------------------------ prompts
@pytest.fixture(scope="module")
def small_clip():
    return build_model(random_state_dict(SMALL))


def prompters():
    return [PadPrompter(4, 32), FixedPatchPrompter(3, 32), RandomPatchPrompter(3, 32)]


def test_zero_prompt_changes_nothing(small_clip):
    images, text = torch.randn(4, 3, 32, 32), torch.randn(5, 32)
    with torch.no_grad():
        plain = small_clip.logits(small_clip.encode_image(images), text)
        for prompter in prompters():
            for p in prompter.parameters():
                torch.nn.init.zeros_(p)
            assert torch.allclose(PromptCLIP(small_clip, text, visual_prompt=prompter)(images), plain, atol=1e-6)
        assert torch.allclose(PromptCLIP(small_clip, text, deep_prompt=DeepPrompter(64, num_tokens=0))(images),
                              plain, atol=1e-6)


def test_gradients_reach_only_the_prompt(small_clip):
    images, labels, text = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]), torch.randn(5, 32)
    for visual, deep in [(PadPrompter(4, 32), None), (None, DeepPrompter(64, 2, injection_layer=1)),
                         (None, DeepPrompter(64, 2, every_layer=True, layers=2))]:
        model = PromptCLIP(small_clip, text, visual, deep)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        assert all(p.grad is None for p in small_clip.parameters())
        prompt = list(model.prompts().parameters())
        assert prompt and all(p.grad is not None and p.grad.abs().sum() > 0 for p in prompt)
        assert set(model.state_dict()) == {f"{'visual' if visual else 'deep'}_prompt.{k}"
                                           for k, _ in (visual or deep).named_parameters()}


def test_prompts_touch_only_their_pixels():
    images = torch.randn(2, 3, 32, 32)
    changed = (PadPrompter(4, 32)(images) != images)
    frame = torch.ones(32, 32, dtype=torch.bool)
    frame[4:28, 4:28] = False
    assert torch.equal(changed, frame.expand(2, 3, 32, 32))
    patch = torch.zeros(32, 32, dtype=torch.bool)
    patch[:3, :3] = True
    assert torch.equal(FixedPatchPrompter(3, 32)(images) != images, patch.expand(2, 3, 32, 32))
    moved = RandomPatchPrompter(3, 32)(images) != images
    assert moved.sum() == 2 * 3 * 9 and torch.equal(moved[0], moved[1])  # one place for the whole batch


def inputs_of_blocks(clip, encode, images):
    """The token sequences entering each block of the image encoder during ``encode(images)``."""
    seen = []
    hooks = [b.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
             for b in clip.visual.transformer.resblocks]
    with torch.no_grad():
        encode(images)
    for hook in hooks:
        hook.remove()
    return seen


def test_deep_prompts_lengthen_the_sequence(small_clip):
    images, patches = torch.randn(2, 3, 32, 32), (32 // 8) ** 2
    plain = inputs_of_blocks(small_clip, small_clip.encode_image, images)
    deep = DeepPrompter(64, num_tokens=3, injection_layer=1)
    torch.nn.init.zeros_(deep.tokens)
    prompted = inputs_of_blocks(small_clip, lambda x: deep.encode_image(small_clip.visual, x), images)
    assert [s.shape[1] for s in plain] == [1 + patches] * 2 and [s.shape[1] for s in prompted] == [1 + patches, 4 + patches]
    assert torch.equal(prompted[0], plain[0])  # before the injection layer: nothing changes
    assert torch.equal(prompted[1][:, [0, *range(4, 4 + patches)]], plain[1])  # class token and patches as they were
    assert torch.equal(prompted[1][:, 1:4], torch.zeros(2, 3, 64))  # the three (zero) tokens after the class token
    every = DeepPrompter(64, num_tokens=3, injection_layer=0, every_layer=True, layers=2)
    with torch.no_grad():
        every.tokens.copy_(torch.arange(2.0).view(2, 1, 1).expand(2, 3, 64))  # set i is all i
    prompted = inputs_of_blocks(small_clip, lambda x: every.encode_image(small_clip.visual, x), images)
    assert [s.shape[1] for s in prompted] == [4 + patches] * 2
    assert all(torch.equal(s[:, 1:4], torch.full((2, 3, 64), float(i))) for i, s in enumerate(prompted))


# ------------------------------------------------------------------ the mini-CLIP's cache
TINY = dict(images=64, epochs=1, width=64, vision_layers=1, text_layers=1, patch_size=8, resolution=32, merges=20,
            batch_size=32, lr=1e-3, warmup=0.1, logit_scale=20.0, context_length=16, seed=0)


def test_cache_built_once_under_a_lock(tmp_path):
    import threading

    from reference_torch.mini_clip import mini_clip
    results = [None, None]

    def build(i):
        results[i] = mini_clip(tmp_path, TINY, log=lambda message: None)[2]
    threads = [threading.Thread(target=build, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # both asked at once: one trained it, the other waited for the lock and read its file
    assert sorted(r["cached"] for r in results) == [False, True]
    assert results[0]["file"] == results[1]["file"] and len(list(tmp_path.glob("mini_clip-*.pt"))) == 1


def test_damaged_cache_is_trained_again(tmp_path):
    from reference_torch.mini_clip import mini_clip
    mini_clip(tmp_path, TINY, log=lambda message: None)
    path = next(tmp_path.glob("mini_clip-*.pt"))
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    said = []
    model, tokenizer, info = mini_clip(tmp_path, TINY, log=said.append)
    assert not info["cached"] and "truncated or damaged" in said[0] and said[0].endswith("building it again")
    assert mini_clip(tmp_path, TINY, log=said.append)[2]["cached"]  # the new file reads back


# ------------------------------------------------------------------ drivers
@pytest.fixture(scope="module")
def quick_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("clip")


@pytest.fixture(scope="module")
def quick_runs(quick_folder, torch_one_thread):
    """--quick runs of the three drivers in one folder: the first trains the mini-CLIP into
    <folder>/mini_clip, the others read it."""
    from driver_run import run_quick
    return {name: run_quick(name, quick_folder / name) for name in ("visual_prompting", "clip_zeroshot", "deep_prompting")}


@pytest.mark.slow
def test_zero_shot_quick(quick_runs):
    metrics, manifest = quick_runs["clip_zeroshot"]
    assert {f["file"] for f in manifest["figures"]} == {"templates.png", "predictions.png"}
    assert "read from its cache" in metrics["model"]  # visual_prompting trained it
    assert len(metrics["templates"]) == 6 and metrics["templates"][0]["template"] == "This is a photo of a {}"
    assert metrics["top5"] > metrics["top1"] and metrics["trainable_parameters"] == 0
    assert manifest["headline"]["baseline"] == 0.1 and manifest["headline"]["baseline_label"] == "chance"
    # the quick mini-CLIP learned the clean shapes, and the quick run's test images are clean ones: far above
    # chance (10 %), by more than four standard errors of its accuracy on the 300 test images
    assert "clean shapes images" in metrics["model"] and metrics["test_images"] == 300
    assert metrics["top1"] - 0.1 > 4 * (metrics["top1"] * (1 - metrics["top1"]) / 300) ** 0.5


@pytest.mark.slow
def test_visual_prompting_quick(quick_runs):
    metrics, manifest = quick_runs["visual_prompting"]
    runs = metrics["runs"]
    assert metrics["shift"] == "dark" and "trained here" in metrics["model"]
    # the padding prompt: 4 frames of width 4 around 32 x 32 images, 3 channels
    assert runs["padding"]["trainable_parameters"] == 3 * (2 * 4 * 32 + 2 * 4 * 24)
    assert f"mini-CLIP ({runs['padding']['frozen_parameters']:,} parameters" in metrics["model"]  # all of it
    assert {f["file"] for f in manifest["figures"]} == {"accuracy.png", "prompts.png"}
    # the cross-dataset evaluation offline: the 10 shapes, then the 12 colour words, 22-way
    classes = metrics["cross_dataset_classes"]
    assert len(classes) == 22 and classes[:3] == ["circle", "square", "triangle"] and classes[10] == "red"
    assert set(runs["padding"]["cross_dataset"]) == {"shapes", "shape_colours"}
    assert manifest["headline"]["baseline"] == runs["zero_shot"]["test"]
    # the test: on the shifted (darkened) clean shapes, where the mini-CLIP's zero-shot accuracy
    # drops, the learned padding prompt raises the accuracy by more than the noise the driver computes
    # (one standard error of the difference; here twice that)
    zero, padding = runs["zero_shot"], runs["padding"]
    assert zero["clean_test"] > zero["test"] + 0.2  # the shift hurts
    assert padding["test"] - zero["test"] > 2 * padding["gain_noise"] > 0


@pytest.mark.slow
def test_deep_prompting_quick(quick_runs):
    metrics, _ = quick_runs["deep_prompting"]
    runs = metrics["runs"]
    assert set(runs) == {"zero_shot", "layer_0", "every_layer", "padding", "linear_probe"}
    assert runs["layer_0"]["trainable_parameters"] == 4 * 64  # 4 tokens of the encoder's width
    assert runs["every_layer"]["trainable_parameters"] == 2 * 4 * 64  # fresh ones before each of the 2 blocks
    assert runs["linear_probe"]["trainable_parameters"] == 64 * 10 + 10


@pytest.mark.slow
def test_quick_runs_quote_only_recorded_numbers(quick_runs, quick_folder):
    from assignments.report import unsupported_numbers
    for name in quick_runs:  # every number in a caption or note is one that metrics.json or a table holds
        assert unsupported_numbers(quick_folder / name) == [], name


def test_refusals(tmp_path):
    from driver_run import assert_refused
    assert "needs OpenAI's weights" in assert_refused(tmp_path, "clip_zeroshot", "--dataset", "cifar10")
    assert_refused(tmp_path, "visual_prompting", "--weights", str(tmp_path / "missing.pt"))
    assert_refused(tmp_path, "visual_prompting", "--prompts", "padding,frame")
    assert_refused(tmp_path, "deep_prompting", "--shift", "sideways")

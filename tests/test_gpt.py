"""The character-level GPT (reference_torch.gpt), its text data, its tokenizer, its minidl
twin and the gpt driver.

Model: a later character never changes an earlier position's logits; the written-out and
the fused attention agree; configure_optimizers puts every parameter in one group, decay
on Linear weights only; greedy generation is deterministic, seeded sampling repeatable,
the key/value cache changes no token; top-k and top-p keep what they should. A GPT-2
checkpoint in Hugging Face's layout (Conv1D weights, tied output layer), written here with
random values, loads into the model it came from. The minidl twin gives the torch model's
logits and gradients in float64. Tokenizer: byte-level BPE on hand-made merges, and on
CLIP's real merge list the token ids OpenAI's tokenizer gives. Driver: on the quick profile
the validation loss falls well below ln(vocabulary size) and the generated lines pass the
grammar more often than an untrained model's.
"""
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import minidl.gpt  # noqa: E402
from driver_run import assert_refused, quick_run_fixture, run_quick  # noqa: E402
from reference_torch.bpe import BPE, GPT2Tokenizer, bytes_to_unicode, read_merges  # noqa: E402
from reference_torch.gpt import GPT, nucleus  # noqa: E402
from reference_torch.text import TextDataset, accepts, grammar_corpus, grammar_scores  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def small_gpt(seed=0, vocab_size=13, block_size=12, n_layer=2, n_head=2, n_embd=16, dropout=0.0, **changes):
    config = GPT.get_default_config()
    config.model_type, config.n_layer, config.n_head, config.n_embd = None, n_layer, n_head, n_embd
    config.vocab_size, config.block_size = vocab_size, block_size
    config.embd_pdrop = config.resid_pdrop = config.attn_pdrop = dropout
    vars(config).update(changes)
    torch.manual_seed(seed)
    return GPT(config)


def ids(*shape, high=13, seed=0):
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ the model
@pytest.mark.parametrize("fused", [False, True])
def test_a_later_character_leaves_earlier_logits_unchanged(fused):
    model = small_gpt(use_flash_attn=fused).eval()
    x = ids(2, 10)
    changed = x.clone()
    changed[:, 6] = (x[:, 6] + 1) % 13
    before, after = model(x), model(changed)
    torch.testing.assert_close(before[:, :6], after[:, :6], rtol=0, atol=1e-6)
    assert (before[:, 6:] - after[:, 6:]).abs().max() > 1e-3  # from position 6 on it sees the change


def test_written_out_and_fused_attention_agree_with_gradients():
    written, fused = small_gpt(), small_gpt(use_flash_attn=True)
    fused.load_state_dict(written.state_dict())
    x, y = ids(3, 12), ids(3, 12, seed=1)
    (logits_a, loss_a), (logits_b, loss_b) = written(x, y), fused(x, y)
    torch.testing.assert_close(logits_a, logits_b, rtol=1e-5, atol=1e-5)
    loss_a.backward()
    loss_b.backward()
    for (name, a), b in zip(written.named_parameters(), fused.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_model_types_and_config_errors():
    config = GPT.get_default_config()
    config.model_type, config.vocab_size, config.block_size = "gpt-nano", 10, 8
    model = GPT(config)
    assert (len(model.transformer.h), model.transformer.h[0].attn.n_head, model.config.n_embd) == (3, 3, 48)
    assert config.n_layer is None  # the caller's config is not changed
    config.n_layer = 4
    with pytest.raises(ValueError, match="not both"):
        GPT(config)
    config.model_type = "gpt-huge"
    with pytest.raises(ValueError, match="gpt-huge"):
        GPT(config)


def test_configure_optimizers_decays_linear_weights_only():
    model = small_gpt()
    train_config = type("TrainConfig", (), {"learning_rate": 5e-4, "betas": (0.9, 0.95), "weight_decay": 0.1})
    optimizer = model.configure_optimizers(train_config)
    decay, no_decay = optimizer.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"], decay["lr"], decay["betas"]) == (0.1, 0.0, 5e-4,
                                                                                          (0.9, 0.95))
    names = {id(p): n for n, p in model.named_parameters()}
    grouped = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(names.values())  # every parameter, each once
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed == {n for n in names.values()
                       if n.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight", "lm_head.weight"))}


def test_generation_greedy_seeded_and_cached_alike():
    model = small_gpt(block_size=8)
    prompt = ids(2, 3)
    greedy = model.generate(prompt, 20)  # past the block of 8: the window moves
    assert greedy.shape == (2, 23) and torch.equal(greedy[:, :3], prompt)
    assert torch.equal(greedy, model.generate(prompt, 20))
    assert torch.equal(greedy, model.generate(prompt, 20, use_cache=False))

    def sample(seed, use_cache):
        return model.generate(prompt, 20, temperature=1.5, do_sample=True, top_p=0.95, use_cache=use_cache,
                              generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sample(1, True), sample(1, True))
    assert torch.equal(sample(1, True), sample(1, False))
    assert not torch.equal(sample(1, True), sample(2, True))
    assert model.training  # generate switches to eval and back


def test_top_k_draws_only_the_k_most_likely():
    model = small_gpt(vocab_size=40)
    prompt = ids(1, 4, high=40).repeat(400, 1)
    drawn = model.generate(prompt, 1, temperature=5.0, do_sample=True, top_k=3,
                           generator=torch.Generator().manual_seed(0))[:, -1]
    best_three = set(model.eval()(prompt[:1])[0, -1].topk(3).indices.tolist())
    assert set(drawn.tolist()) == best_three  # a high temperature: all three show up, nothing else


def test_nucleus_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.15, 0.5, 0.05, 0.3]]))
    kept = {p: torch.isfinite(nucleus(logits, p))[0].tolist() for p in (0.4, 0.8, 0.81, 1.0)}
    assert kept[0.4] == [False, True, False, False]
    assert kept[0.8] == [False, True, False, True]  # 0.5 + 0.3 reaches 0.8
    assert kept[0.81] == [True, True, False, True]
    assert kept[1.0] == [True, True, True, True]


def test_attention_weights_are_causal_distributions():
    model = small_gpt()
    (first, second) = model.attention_weights(ids(1, 9))
    assert first.shape == (1, 2, 9, 9)
    torch.testing.assert_close(first.sum(-1), torch.ones(1, 2, 9))
    assert first.triu(diagonal=1).abs().max() == 0  # nothing from the future


# ------------------------------------------------------- GPT-2 checkpoints
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def gpt2_layout(model, prefix=""):
    """The model's weights as a Hugging Face GPT-2 checkpoint holds them: no "transformer."
    (GPT2Model), Conv1D weights (in, out), the attention's mask buffers, no lm_head (tied)."""
    state = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight":
            continue
        key = key.removeprefix("transformer.")
        state[prefix + key] = value.t().contiguous() if key.endswith(CONV1D) else value.clone()
    for i in range(model.config.n_layer):
        size = model.config.block_size
        state[f"{prefix}h.{i}.attn.bias"] = torch.tril(torch.ones(size, size)).view(1, 1, size, size)
        state[f"{prefix}h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    return state


def tied(model):
    with torch.no_grad():
        model.lm_head.weight.copy_(model.transformer.wte.weight)
    return model.eval()


def test_gpt2_checkpoint_folder_loads_into_the_same_model(tmp_path):
    source = tied(small_gpt(vocab_size=50, block_size=16, n_head=4, n_embd=32))
    state = gpt2_layout(source)
    assert state["h.0.attn.c_attn.weight"].shape == (32, 96)  # Conv1D: (in, out), as in GPT-2's files
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps({"n_layer": 2, "n_head": 4, "n_embd": 32, "n_positions": 16,
                                                      "vocab_size": 50, "activation_function": "gelu_new"}))
    loaded = GPT.from_pretrained(tmp_path).eval()
    x = ids(2, 16, high=50)
    torch.testing.assert_close(loaded(x), source(x), rtol=1e-5, atol=1e-5)
    # the transposition, checked on Conv1D's own rule out = x @ W + b (c_proj is square: a wrong
    # transposition would fit its shape)
    h = torch.randn(3, 32)
    for name, layer in (("attn.c_proj", loaded.transformer.h[1].attn.c_proj),
                        ("mlp.c_fc", loaded.transformer.h[1].mlp.c_fc)):
        expected = h @ state[f"h.1.{name}.weight"] + state[f"h.1.{name}.bias"]
        torch.testing.assert_close(layer(h), expected, msg=name)


def test_gpt2_weight_file_alone_with_prefix_and_lm_head(tmp_path):
    source = small_gpt(vocab_size=30, block_size=8, n_head=2, n_embd=128, n_layer=1).eval()  # GPT-2's head size 64
    state = {**gpt2_layout(source, prefix="transformer."), "lm_head.weight": source.lm_head.weight.clone()}
    torch.save(state, tmp_path / "weights.bin")
    loaded = GPT.from_pretrained(tmp_path / "weights.bin").eval()  # no config.json: sizes from the tensors
    assert loaded.config.n_head == 2 and loaded.block_size == 8
    x = ids(1, 8, high=30)
    torch.testing.assert_close(loaded(x), source(x), rtol=1e-5, atol=1e-5)


def test_gpt2_checkpoint_missing_or_foreign(tmp_path):
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin") as missing:
        GPT.from_pretrained(tmp_path)
    assert str(tmp_path) in str(missing.value) and "\n" not in str(missing.value)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        GPT.from_pretrained(tmp_path)


# ------------------------------------------------------------- the twin
def test_minidl_twin_gives_the_same_logits_and_gradients():
    net = small_gpt(n_layer=2, n_head=2, n_embd=16).double().eval()
    twin = minidl.gpt.GPT(net.config).double().eval()
    twin.load_state_dict({k: v.numpy() for k, v in net.state_dict().items()})
    x, y = ids(3, 12), ids(3, 12, seed=1)
    logits, loss = net(x, y)
    twin_logits, twin_loss = twin(x.numpy(), y.numpy())
    np.testing.assert_allclose(twin_logits.data, logits.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(twin_loss.item(), loss.item(), rtol=1e-12)
    loss.backward()
    twin_loss.backward()
    grads = {n: p.grad.numpy() for n, p in net.named_parameters()}
    assert {n for n, _ in twin.named_parameters()} == set(grads)
    for name, p in twin.named_parameters():
        np.testing.assert_allclose(p.grad, grads[name], rtol=1e-8, atol=1e-12, err_msg=name)


# -------------------------------------------------------------- tokenizer
def test_byte_level_bpe_on_hand_made_merges(tmp_path):
    merges = [("l", "l"), ("h", "e"), ("he", "ll"), ("hell", "o"), ("Ġ", "w"), ("Ġw", "o")]
    vocab = [*bytes_to_unicode().values(), "ll", "he", "hell", "hello", "Ġw", "Ġwo"]
    (tmp_path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tokenizer = GPT2Tokenizer.from_folder(tmp_path)
    assert [vocab[i] for i in tokenizer.encode("hello world")] == ["hello", "Ġwo", "r", "l", "d"]
    assert [vocab[i] for i in tokenizer.encode("yellow")] == ["y", "e", "ll", "o", "w"]  # "he" never forms
    text = "Grüße, 世界! 🙂  tabs\tand\nnew lines 12,5 don't"
    assert tokenizer.decode(tokenizer.encode(text)) == text  # every byte has a symbol
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        GPT2Tokenizer.from_folder(tmp_path / "nowhere")


def test_bpe_core_gives_clips_token_ids(shared_data):
    """CLIP's vocabulary as OpenAI's tokenizer builds it: 256 byte symbols, the same with
    </w>, the merged pairs, two special tokens; "a photo of a cat" is 320 1125 539 320 2368."""
    merges = read_merges(shared_data / "clip" / "bpe_simple_vocab_16e6.txt.gz", limit=49152 - 256 - 2)
    vocab = [*bytes_to_unicode().values()]
    vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408
    index = {t: i for i, t in enumerate(vocab)}
    bpe = BPE(merges, end_of_word="</w>")
    assert [index[s] for w in "a photo of a cat".split() for s in bpe(w)] == [320, 1125, 539, 320, 2368]


# ------------------------------------------------------------------ text
def test_text_dataset_blocks_and_split_by_position():
    text = "abcdefghij" * 10
    data = TextDataset(text, block_size=4)
    assert data.get_vocab_size() == 10 and len(data) == 96
    x, y = data[7]
    assert data.decode(x.tolist()) == "hija" and data.decode(y.tolist()) == "ijab"
    train, val = data.split(0.9)
    assert train.text + val.text == text and len(val.text) == 10 and val.chars == data.chars
    with pytest.raises(ValueError, match="block_size"):
        TextDataset("short", block_size=8)


def test_grammar_accepts_its_corpus_and_rejects_broken_agreement():
    corpus = grammar_corpus(lines=300, seed=3)
    scores = grammar_scores(corpus)
    assert scores["lines"] == 300 and scores["acceptance"] == 1.0 and scores["sum_accuracy"] == 1.0
    assert 0 < scores["sums"] < 300
    good = ["an orange star is at the top.", "two small red circles are on the left.", "the blue crosses are in "
            "the middle.", "one big green ring is on the right.", "17+25=42", "17+25=43"]
    bad = ["a orange star is at the top.", "an red star is at the top.", "two red circle are on the left.",
           "one blue stars is on the left.", "the blue crosses is in the middle.", "a red circles is on the left.",
           "a red circle is on the left", "017+25=42", "17+250=267", "a red dog is on the left.", ""]
    assert [accepts(line) for line in good] == [True] * len(good)
    assert [accepts(line) for line in bad] == [False] * len(bad)
    scores = grammar_scores("\n".join(good + bad) + "\nan unfinished li")
    assert (scores["lines"], scores["accepted"], scores["sums"], scores["sums_right"]) == (17, 6, 2, 1)


# ---------------------------------------------------------------- driver
gpt_quick = quick_run_fixture("gpt")


@pytest.mark.slow
def test_gpt_driver_quick_learns_the_grammar(gpt_quick):
    out, metrics, manifest = gpt_quick
    assert metrics["val_loss"] < 0.6 * math.log(metrics["vocab_size"])
    assert metrics["acceptance"] > metrics["untrained_acceptance"] + 0.2
    headline = manifest["headline"]  # the grammar's acceptance, trained against untrained
    assert (headline["value"], headline["baseline"]) == (metrics["acceptance"], metrics["untrained_acceptance"])
    assert headline["verdict"] == "beats the baseline"
    assert {"loss.png", "attention.png", "samples.png"} <= {f["file"] for f in manifest["figures"]}
    for key in ("train_tokens_per_cpu_second", "generate_tokens_per_second_cached", "generate_tokens_per_second"):
        assert metrics[key] > 0


@pytest.mark.slow
def test_gpt_driver_reads_a_text_file(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_text("Shall I compare thee to a summer's day?\nThou art more lovely and more temperate.\n" * 40,
                    encoding="utf-8")
    metrics, manifest = run_quick("gpt", tmp_path / "run", "--dataset", "text", "--text-file", str(path),
                                  "--epochs", "1", "--steps-per-epoch", "30")
    assert metrics["vocab_size"] == len(set(path.read_text())) and "acceptance" not in metrics
    assert manifest["headline"]["baseline"] == metrics["uniform_loss"]  # no grammar: the loss against a guess


def test_gpt_driver_refuses_a_missing_text_file(tmp_path):
    assert_refused(tmp_path, "gpt", "--text-file", str(tmp_path / "missing.txt"), "--dataset", "text")

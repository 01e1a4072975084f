"""Scorers on tiny random CLIP models saved in the real folder layouts, checked against independent formulas."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from trl_dde.evaluation import available_rewards, combine_rewards, load_reward
from trl_dde.evaluation.scorers.clip_backbone import letterbox_preprocess
from trl_dde.evaluation.scorers.open_clip_conversion import open_clip_to_transformers
from trl_dde.evaluation.tiny import save_tiny_clip, save_tiny_scorers

PROMPTS = ["a red square", "a blue disc", "a red square", "a green stripe"]


@pytest.fixture(scope="session")
def scorer_kwargs(tmp_path_factory):
    return save_tiny_scorers(tmp_path_factory.mktemp("scorers"))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    sizes = [(40, 40), (50, 30), (24, 36), (64, 64)]  # square, landscape, portrait, larger
    return [Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)) for w, h in sizes]


def reference_clip(folder):
    """The same CLIP folder, run through transformers' own CLIPModel.forward (logits_per_image)."""
    from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

    return CLIPModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder), CLIPImageProcessorPil.from_pretrained(folder)


def forward_logits(model, tokenizer, pixel_values, prompts):
    tokens = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        output = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixel_values)
    return output.logits_per_image.diagonal()  # logit_scale.exp() * cosine of image i with prompt i


def test_every_builtin_scorer_is_registered_and_named_in_the_cli_help():
    """In a fresh process (other packages, e.g. the benchmark, register their own rewards when imported)."""
    import subprocess
    import sys

    code = ("from trl_dde.evaluation.cli import BUILTIN_SCORERS\nfrom trl_dde.evaluation.rewards import available_rewards\n"
            "print(sorted(BUILTIN_SCORERS) == available_rewards(), sorted(BUILTIN_SCORERS), available_rewards())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.startswith("True"), result.stdout + result.stderr[-2000:]


def test_pickscore_is_the_model_temperature_times_the_cosine(scorer_kwargs, images):
    scores = load_reward("pickscore", device="cpu", batch_size=3, **scorer_kwargs["pickscore"])(images, PROMPTS)
    model, _, _ = reference_clip(scorer_kwargs["pickscore"]["model"])
    _, tokenizer, processor = reference_clip(scorer_kwargs["pickscore"]["processor"])  # laion's processor, as the authors do
    expected = forward_logits(model, tokenizer, processor(images=images, return_tensors="pt")["pixel_values"], PROMPTS)
    assert scores.dtype == torch.float32 and scores.shape == (4,)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    assert scores[0] != scores[2]  # same prompt, different image


def test_clip_score_raw_cosine_and_times_100(scorer_kwargs, images):
    folder = scorer_kwargs["clip"]["model"]
    cosine = load_reward("clip", device="cpu", model=folder)(images, PROMPTS)
    x100 = load_reward("clip", device="cpu", model=folder, scale="x100")
    model, tokenizer, processor = reference_clip(folder)
    logits = forward_logits(model, tokenizer, processor(images=images, return_tensors="pt")["pixel_values"], PROMPTS)
    torch.testing.assert_close(cosine, logits / model.logit_scale.exp(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x100(images, PROMPTS), 100 * cosine.clamp_min(0), rtol=1e-5, atol=1e-5)
    assert folder in x100.description and "100 · max(cosine, 0)" in x100.description
    with pytest.raises(ValueError, match="scale must be one of"):
        load_reward("clip", model=folder, scale="x2.5")


def test_aesthetic_is_the_mlp_on_normalised_image_embeddings(scorer_kwargs, images):
    kwargs = scorer_kwargs["aesthetic"]
    scores = load_reward("aesthetic", device="cpu", **kwargs)(images, ["ignored"] * 4)
    model, _, processor = reference_clip(kwargs["clip_model"])
    with torch.no_grad():
        embedding = model.get_image_features(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"]).pooler_output
    x = embedding / embedding.norm(dim=-1, keepdim=True)
    weights = torch.load(f"{kwargs['predictor']}/aesthetic-model.pth", weights_only=True)
    for index in (0, 2, 4, 6, 7):  # five linear layers, no activation in between
        x = x @ weights[f"layers.{index}.weight"].T + weights[f"layers.{index}.bias"]
    torch.testing.assert_close(scores, x[:, 0], rtol=1e-5, atol=1e-6)


def test_aesthetic_refuses_a_predictor_for_another_embedding_size(tmp_path, scorer_kwargs):
    from trl_dde.evaluation.scorers.aesthetic import AestheticMLP

    torch.save(AestheticMLP(768).state_dict(), tmp_path / "aesthetic-model.pth")
    with pytest.raises(ValueError, match="reads 768-dimensional embeddings"):
        load_reward("aesthetic", predictor=str(tmp_path), clip_model=scorer_kwargs["aesthetic"]["clip_model"])


# ---- HPSv2: open_clip layout -> transformers CLIPModel ---------------------------------------------------

def to_open_clip(model) -> dict:
    """An independent inverse: a transformers CLIPModel's weights in open_clip's names and layout."""
    state = model.state_dict()
    out = {"logit_scale": state["logit_scale"], "text_projection": state["text_projection.weight"].T,
           "visual.proj": state["visual_projection.weight"].T,
           "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
           "ln_final.weight": state["text_model.final_layer_norm.weight"], "ln_final.bias": state["text_model.final_layer_norm.bias"],
           "visual.class_embedding": state["vision_model.embeddings.class_embedding"],
           "visual.positional_embedding": state["vision_model.embeddings.position_embedding.weight"],
           "visual.conv1.weight": state["vision_model.embeddings.patch_embedding.weight"]}
    for ours, theirs in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for kind in ("weight", "bias"):
            out[f"visual.{theirs}.{kind}"] = state[f"vision_model.{ours}.{kind}"]
    for tower, prefix in (("text_model", ""), ("vision_model", "visual.")):
        layers = model.config.text_config.num_hidden_layers if tower == "text_model" else model.config.vision_config.num_hidden_layers
        for i in range(layers):
            src, dst = f"{tower}.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
            for kind in ("weight", "bias"):
                out[dst + f"attn.in_proj_{kind}"] = torch.cat([state[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
                for ours, theirs in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                                     ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                    out[dst + f"{theirs}.{kind}"] = state[src + f"{ours}.{kind}"]
    return out


def open_clip_style_encoders(state, text_heads, vision_heads, patch):
    """An open_clip-style forward built from torch.nn.MultiheadAttention, which consumes in_proj_weight as is."""

    def blocks(prefix, heads):
        def run(x, mask=None):
            i = 0
            while f"{prefix}transformer.resblocks.{i}.ln_1.weight" in state:
                p = f"{prefix}transformer.resblocks.{i}."
                width = state[p + "ln_1.weight"].shape[0]
                attention = torch.nn.MultiheadAttention(width, heads, batch_first=True)
                attention.load_state_dict({"in_proj_weight": state[p + "attn.in_proj_weight"], "in_proj_bias": state[p + "attn.in_proj_bias"],
                                           "out_proj.weight": state[p + "attn.out_proj.weight"], "out_proj.bias": state[p + "attn.out_proj.bias"]})
                h = torch.nn.functional.layer_norm(x, (width,), state[p + "ln_1.weight"], state[p + "ln_1.bias"])
                x = x + attention(h, h, h, need_weights=False, attn_mask=mask)[0]
                h = torch.nn.functional.layer_norm(x, (width,), state[p + "ln_2.weight"], state[p + "ln_2.bias"])
                h = torch.nn.functional.gelu(h @ state[p + "mlp.c_fc.weight"].T + state[p + "mlp.c_fc.bias"])
                x = x + h @ state[p + "mlp.c_proj.weight"].T + state[p + "mlp.c_proj.bias"]
                i += 1
            return x
        return run

    def encode_text(tokens):
        x = state["token_embedding.weight"][tokens] + state["positional_embedding"][: tokens.shape[1]]
        mask = torch.full((tokens.shape[1],) * 2, float("-inf")).triu(1)  # causal
        x = blocks("", text_heads)(x, mask)
        width = x.shape[-1]
        x = torch.nn.functional.layer_norm(x, (width,), state["ln_final.weight"], state["ln_final.bias"])
        return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ state["text_projection"]  # end-of-text token

    def encode_image(pixels):
        x = torch.nn.functional.conv2d(pixels, state["visual.conv1.weight"], stride=patch).flatten(2).transpose(1, 2)
        x = torch.cat([state["visual.class_embedding"].expand(x.shape[0], 1, -1), x], dim=1) + state["visual.positional_embedding"]
        width = x.shape[-1]
        x = torch.nn.functional.layer_norm(x, (width,), state["visual.ln_pre.weight"], state["visual.ln_pre.bias"])
        x = blocks("visual.", vision_heads)(x)
        x = torch.nn.functional.layer_norm(x[:, 0], (width,), state["visual.ln_post.weight"], state["visual.ln_post.bias"])
        return x @ state["visual.proj"]

    return encode_text, encode_image


@pytest.fixture(scope="module")
def hps_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hps")
    model = save_tiny_clip(folder / "architecture", seed=7)
    (folder / "checkpoints").mkdir()
    torch.save({"state_dict": to_open_clip(model)}, folder / "checkpoints" / "HPS_v2.1_compressed.pt")
    return model, folder


def test_open_clip_keys_map_exactly_onto_the_transformers_model(hps_files):
    model, _ = hps_files
    converted = open_clip_to_transformers({f"module.{k}": v for k, v in to_open_clip(model).items()})  # DDP prefix too
    expected = model.state_dict()
    assert converted.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(converted[key], value), key
    with pytest.raises(ValueError, match="keys have no transformers counterpart.*visual.attnpool"):
        open_clip_to_transformers({**to_open_clip(model), "visual.attnpool.weight": torch.zeros(1)})


def test_hpsv2_scores_match_an_open_clip_style_forward(hps_files, images):
    model, folder = hps_files
    scorer = load_reward("hpsv2", device="cpu", checkpoint=str(folder / "checkpoints"), architecture=str(folder / "architecture"))
    assert scorer.name == "hpsv2.1" and "v2.1" in scorer.description
    scores = scorer(images, PROMPTS)

    config = model.config
    encode_text, encode_image = open_clip_style_encoders(
        to_open_clip(model), config.text_config.num_attention_heads, config.vision_config.num_attention_heads,
        config.vision_config.patch_size)
    hps = scorer.function.clip
    tokens = hps.tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        text = torch.nn.functional.normalize(encode_text(tokens), dim=-1)
        image = torch.nn.functional.normalize(encode_image(hps.preprocess(images)), dim=-1)
    torch.testing.assert_close(scores, (image * text).sum(-1), rtol=1e-4, atol=1e-5)


def test_hps_preprocessing_letterboxes_on_black(hps_files):
    _, folder = hps_files
    preprocess = letterbox_preprocess(str(folder / "architecture"), 32)
    white = Image.new("RGB", (64, 32), "white")  # landscape 2:1 -> 32 x 16 centred, black bands above and below
    pixels = preprocess([white])[0]
    mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711])
    torch.testing.assert_close(pixels[:, 0, 0], -mean / std)  # padding: black, normalised
    torch.testing.assert_close(pixels[:, 16, 16], (1 - mean) / std)  # content: white, normalised
    assert torch.allclose(pixels[:, 7, :], (-mean / std)[:, None]) and torch.allclose(pixels[:, 8, :], ((1 - mean) / std)[:, None])


def test_hpsv2_version_default_hub_file_and_wrong_files(hps_files, monkeypatch, tmp_path):
    import huggingface_hub

    _, folder = hps_files
    architecture = str(folder / "architecture")
    requests = []

    def fake_download(repo_id, filename, repo_type="model", **kwargs):  # the network boundary
        requests.append((repo_id, filename, repo_type))
        return str(folder / "checkpoints" / "HPS_v2.1_compressed.pt")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    load_reward("hpsv2", device="cpu", architecture=architecture)
    assert requests == [("xswu/HPSv2", "HPS_v2.1_compressed.pt", "model")]
    load_reward("hpsv2", version="v2.0", device="cpu", architecture=architecture)
    assert requests[-1] == ("xswu/HPSv2", "HPS_v2_compressed.pt", "model")

    with pytest.raises(ValueError, match="is the HPS v2.0 file but version='v2.1'"):
        load_reward("hpsv2", checkpoint=str(tmp_path / "HPS_v2_compressed.pt"), architecture=architecture)
    with pytest.raises(ValueError, match="version must be one of"):
        load_reward("hpsv2", version="v3", architecture=architecture)
    with pytest.raises(FileNotFoundError, match="without HPS_v2.1_compressed.pt"):
        load_reward("hpsv2", checkpoint=str(tmp_path), architecture=architecture)
    torch.save({"state_dict": {"visual.conv1.weight": torch.zeros(32, 3, 8, 8)}}, tmp_path / "HPS_v2.1_compressed.pt")
    with pytest.raises(ValueError, match="does not match the CLIP architecture.*missing"):
        load_reward("hpsv2", checkpoint=str(tmp_path), architecture=architecture)


# ---- rewards as callables ------------------------------------------------------------------------------

def brightness(images, prompts):
    return [float(np.asarray(image).mean()) for image in images]


def test_user_callables_and_import_strings_work_wherever_a_scorer_does(tmp_path, monkeypatch, images):
    reward = load_reward(brightness)
    expected = torch.tensor([np.asarray(image).mean() for image in images], dtype=torch.float32)
    torch.testing.assert_close(reward(images, PROMPTS), expected)
    assert reward.name == "brightness"

    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""
        import torch

        def width(images, prompts):
            return torch.tensor([image.width for image in images], dtype=torch.float64)

        class Scaled:
            def __init__(self, factor=1.0):
                self.factor = factor
            def __call__(self, images, prompts):
                return [self.factor * len(p) for p in prompts]
    """))
    from_file = load_reward(f"{tmp_path}/my_rewards.py:width")
    assert from_file(images, PROMPTS).tolist() == [40, 50, 24, 64] and from_file.name == "width"
    monkeypatch.chdir(tmp_path)  # a module in the working folder is importable, as with `python -m`
    scaled = load_reward("my_rewards:Scaled", factor=2.0)
    assert scaled(images, PROMPTS).tolist() == [24.0, 22.0, 24.0, 28.0]
    with pytest.raises(TypeError, match="takes no options"):
        load_reward("my_rewards:width", factor=2.0)
    with pytest.raises(ValueError, match="Unknown reward 'nope'"):
        load_reward("nope")


def test_rewards_must_return_one_finite_score_per_image(images):
    with pytest.raises(ValueError, match="returned 1 scores for 4 images"):
        load_reward(lambda images, prompts: [1.0])(images, PROMPTS)
    with pytest.raises(ValueError, match="4 images but 3 prompts"):
        load_reward(brightness)(images, PROMPTS[:3])
    with pytest.raises(ValueError, match="returned nan for image 1 \\(prompt 'a blue disc'\\)"):
        load_reward(lambda images, prompts: [0.0, float("nan"), 0.0, 0.0])(images, PROMPTS)


def test_combine_rewards_is_the_weighted_sum(images):
    lengths = lambda images, prompts: [float(len(p)) for p in prompts]  # noqa: E731
    combined = combine_rewards([brightness, lengths], [0.5, -2.0])
    expected = 0.5 * load_reward(brightness)(images, PROMPTS) - 2.0 * torch.tensor([12.0, 11.0, 12.0, 14.0])
    torch.testing.assert_close(combined(images, PROMPTS), expected)
    with pytest.raises(ValueError, match="one weight per reward"):
        combine_rewards([brightness], [1.0, 2.0])


# ---- optional dependencies -----------------------------------------------------------------------------

def test_imagereward_missing_or_conflicting_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ImageReward", None)  # not installed
    with pytest.raises(ImportError, match="pip install image-reward.*does not import with transformers 5"):
        load_reward("imagereward")
    monkeypatch.delitem(sys.modules, "ImageReward")
    # installed, but its copied BLIP code imports what transformers 5 removed (the real image-reward 1.5 failure)
    package = tmp_path / "ImageReward"
    package.mkdir()
    (package / "__init__.py").write_text("from transformers.modeling_utils import apply_chunking_to_forward\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match="apply_chunking_to_forward.*transformers 5 removed"):
        load_reward("imagereward")


def test_a_missing_matplotlib_gives_the_install_command(monkeypatch, tmp_path):
    from trl_dde.evaluation.diagnostics import load_alphas_cumprod, plot_single_shot_coefficient

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'trl-dde\[eval\]'"):
        plot_single_shot_coefficient(load_alphas_cumprod()[0], tmp_path / "x.png")


def test_the_eval_cli_module_imports_nothing_heavy():
    """`trl-dde --help` must stay fast: evaluation/cli.py needs only the standard library to build its parser."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "trl_dde", "evaluation", "cli.py")
    code = textwrap.dedent(f"""
        import argparse, importlib.util, sys
        spec = importlib.util.spec_from_file_location("eval_cli", {path!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.add_eval_arguments(argparse.ArgumentParser())
        heavy = [name for name in ("torch", "transformers", "diffusers", "numpy") if name in sys.modules]
        assert not heavy, heavy
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr

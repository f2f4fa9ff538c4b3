"""VISAGE landscapes: directions, exact perturbed weights, the basin score, and the job end to end."""

import csv
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import transformers
from flax import nnx

import dss.models
from dss import assets, landscape, sharding
from dss.eval.io import read_jsonl
from dss.eval.keyword import attack_success
from dss.models import ModelConfig, Transformer
from dss.data import BUNDLED_DIR

DATA = BUNDLED_DIR  # the licensed data shipped in dss/data/files
ADVBENCH = DATA / "advbench" / "harmful_behaviors.csv"


def _model(seed, tied, vocab=96, **hf):
    """A tiny Llama with random weights, biases and norm gains (zeros and ones would hide mistakes),
    filled from numpy: eager initialisation would compile a kernel per shape."""
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied, **hf)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(ModelConfig.from_hf(config.to_dict()),
                                                                   rngs=nnx.Rngs(0))))
    rng, flat = np.random.default_rng(seed), nnx.to_flat_state(state)
    for path, var in flat:
        noise = rng.standard_normal(var.shape).astype(np.float32)
        var.set_value(jnp.asarray(1.0 + 0.1 * noise if path[-1] == "weight" else 0.2 * noise))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


@pytest.fixture(scope="module")
def biased(tmp_path_factory):
    """Directory of a tied-embedding Llama with q/k/v/o and MLP biases."""
    path = tmp_path_factory.mktemp("biased")
    dss.models.save_pretrained(_model(0, tied=True, attention_bias=True, mlp_bias=True), path)
    return path


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh(1, -1, 1)


def test_random_direction_is_layer_normalised(biased):
    """Each slice has its weight's norm (biases and the tied embedding included), gains get none."""
    model = dss.models.load_pretrained(biased)
    d = landscape.random_direction(model, seed=3)
    theta, gains = landscape.weights(model), landscape.norm_gain_names(model)
    assert "lm_head" not in theta and "embed" in theta  # tied: the embedding exists, and is perturbed, once
    assert set(d.tensors) == set(theta)
    assert gains == {"final_norm/weight", "layers/attn_norm/weight", "layers/mlp_norm/weight"}
    each_gain = _each_layer({g: theta[g] for g in gains})
    for name, w in _each_layer(theta).items():
        got = _each_layer(d.tensors)[name]
        if name in each_gain:
            assert not got.any(), name
        else:
            assert np.linalg.norm(w) > 0, name  # biases are random here, so they must move too
            np.testing.assert_allclose(np.linalg.norm(got), np.linalg.norm(w), rtol=1e-5, err_msg=name)


def _each_layer(tensors) -> dict[str, np.ndarray]:
    """The weights one by one: each layer's slice of a stacked ("layers/...") tensor is one."""
    out = {}
    for name, t in tensors.items():
        t = np.asarray(t)
        if name.startswith("layers/"):
            out.update({name.replace("layers/", f"layers/{i}/", 1): t[i] for i in range(t.shape[0])})
        else:
            out[name] = t
    return out


def test_random_direction_seeded_and_mesh_independent(biased, mesh):
    """The same seed gives the same values on one device and on 8, laid out like the weights."""
    model, sharded = dss.models.load_pretrained(biased), dss.models.load_pretrained(biased, mesh=mesh)
    a, b = landscape.random_direction(model, 0), landscape.random_direction(model, 0)
    c, s = landscape.random_direction(model, 1), landscape.random_direction(sharded, 0)
    theta = landscape.weights(sharded)
    assert theta["embed"].sharding.spec != jax.sharding.PartitionSpec()  # the test model really is sharded
    for name in a.tensors:
        np.testing.assert_array_equal(np.asarray(a.tensors[name]), np.asarray(b.tensors[name]))
        # same draws; the sharded norm sums in another order, so the scale may differ in the last bit
        np.testing.assert_allclose(np.asarray(a.tensors[name]), np.asarray(s.tensors[name]), rtol=1e-6, err_msg=name)
        assert s.tensors[name].sharding.is_equivalent_to(theta[name].sharding, theta[name].ndim), name
    assert not np.allclose(np.asarray(a.tensors["embed"]), np.asarray(c.tensors["embed"]))


def test_direction_save_load_round_trip(biased, mesh, tmp_path):
    """A saved direction reloads bit for bit, by name, onto a sharded model; a mismatched model is refused."""
    model = dss.models.load_pretrained(biased)
    d = landscape.random_direction(model, 5, dtype="bfloat16")
    path = landscape.save_direction(d, tmp_path / "dirs" / "d.safetensors")
    back = landscape.load_direction(path, dss.models.load_pretrained(biased, mesh=mesh))
    assert (back.name, back.kind, back.meta) == (d.name, d.kind, d.meta)
    for name, t in d.tensors.items():
        assert back.tensors[name].dtype == t.dtype
        np.testing.assert_array_equal(np.asarray(back.tensors[name]), np.asarray(t))
    with pytest.raises(ValueError, match="do not match the model"):
        landscape.load_direction(path, _model(0, tied=False))


def test_cosine_and_orthogonalize(biased):
    """The reported cosine is the flat-vector cosine; Gram-Schmidt zeroes it and keeps the slice norms."""
    model = dss.models.load_pretrained(biased)
    d1, d2 = landscape.random_direction(model, 0), landscape.random_direction(model, 1)
    flat = lambda d: np.concatenate([np.asarray(d.tensors[k]).ravel() for k in sorted(d.tensors)])  # noqa: E731
    v1, v2 = flat(d1), flat(d2)
    expected = v1 @ v2 / (np.linalg.norm(v1) * np.linalg.norm(v2))
    assert abs(expected) > 1e-4
    np.testing.assert_allclose(landscape.cosine(d1, d2), expected, rtol=1e-4)
    o = landscape.orthogonalize(d2, d1)
    assert abs(landscape.cosine(d1, o)) < 1e-6
    for name, t in _each_layer(d2.tensors).items():
        np.testing.assert_allclose(np.linalg.norm(_each_layer(o.tensors)[name]), np.linalg.norm(t), rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(np.vdot(_each_layer(o.tensors)[name], _each_layer(d1.tensors)[name]), 0,
                                   atol=1e-4 * np.linalg.norm(t) ** 2, err_msg=name)  # orthogonal weight by weight


def test_centre_point_is_the_model_and_points_are_exact(biased, mesh):
    """(0, 0) gives the unperturbed logits bit for bit; other points are theta + a d1 + b d2 with
    the model's shardings and untouched norm gains."""
    model = dss.models.load_pretrained(biased, mesh=mesh)
    d1, d2 = landscape.random_direction(model, 0), landscape.random_direction(model, 1)
    p = landscape.Perturbation(model, [d1, d2])
    tokens = np.random.default_rng(0).integers(0, 96, (2, 40)).astype(np.int32)
    logits = nnx.jit(lambda m, t: m(t))
    with jax.set_mesh(mesh):
        base = np.asarray(logits(model, tokens))
        np.testing.assert_array_equal(np.asarray(logits(p.model_at((0.0, 0.0)), tokens)), base)
        assert not np.allclose(np.asarray(logits(p.model_at((0.3, -0.2)), tokens)), base)
    theta, gains = landscape.weights(model), landscape.norm_gain_names(model)
    for coeffs in ((0.5, 0.1), (0.3, -0.2), (0.5, 0.1)):  # revisiting a point gives the same weights
        moved = p.weights_at(coeffs)
        for name, w in theta.items():
            want = np.asarray(w) + coeffs[0] * np.asarray(d1.tensors[name]) + coeffs[1] * np.asarray(d2.tensors[name])
            np.testing.assert_allclose(np.asarray(moved[name]), want, rtol=1e-6, atol=1e-7, err_msg=name)
            assert moved[name].sharding.is_equivalent_to(w.sharding, w.ndim), name
            if name in gains:
                np.testing.assert_array_equal(np.asarray(moved[name]), np.asarray(w))


def test_interpolation_direction_reaches_the_target():
    """model + 1 * (target - model) is the target, norm gains included."""
    model, target = _model(0, tied=False), _model(1, tied=False)
    d = landscape.interpolation_direction(model, target)
    moved, want = landscape.Perturbation(model, [d]).weights_at((1.0,)), landscape.weights(target)
    assert "final_norm/weight" in want and not np.allclose(want["final_norm/weight"], landscape.weights(model)["final_norm/weight"])
    for name, w in want.items():
        np.testing.assert_allclose(np.asarray(moved[name]), np.asarray(w), rtol=1e-6, atol=1e-7, err_msg=name)
    with pytest.raises(ValueError, match="names differ"):
        landscape.interpolation_direction(model, _model(1, tied=True))


def test_grid_has_the_exact_origin():
    """np.linspace(-0.45, 0.45, 21)[10] is -5.6e-17, not the original model; the grid snaps it to 0."""
    a, b = landscape.grid_axes((-0.45, 0.45), 20, 2)
    assert len(a) == 21 and a[10] == 0.0 and np.array_equal(a, b)
    np.testing.assert_allclose(a, np.linspace(-0.45, 0.45, 21), atol=1e-12)
    assert landscape.grid_axes((-0.5, 0.5), 8, 1)[0][::2].tolist() == landscape.grid_axes((-0.5, 0.5), 4, 1)[0].tolist()


AXIS = np.linspace(-0.5, 0.5, 11)  # origin at index 5


@pytest.mark.parametrize("asr, score, extent", [
    # unsafe dips beyond a fully unsafe stretch are islands, not basin
    ([0, 0, 100, 100, 30, 10, 20, 100, 0, 0, 0], (90 + 80 + 70) / 3, [-0.1, 0.1]),
    # non-monotone inside the basin: every point between the walls counts
    ([100, 100, 50, 0, 60, 0, 40, 90, 100, 10, 100], (50 + 100 + 40 + 100 + 60 + 10) / 6, [-0.3, 0.2]),
    # one-sided wall: the basin reaches the grid's edge
    ([0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100], (100 + 90 + 80 + 70 + 60 + 50 + 40 + 30 + 20 + 10) / 10, [-0.5, 0.4]),
])
def test_visage_1d_connected_basin(asr, score, extent):
    v = landscape.visage(asr, [AXIS])
    np.testing.assert_allclose(v["score"], score)
    np.testing.assert_allclose(v["extent"], extent, atol=1e-12)
    np.testing.assert_allclose(v["width"], extent[1] - extent[0], atol=1e-12)
    assert v["basin_points"] == round((extent[1] - extent[0]) / 0.1) + 1
    assert v["clipped"] == (extent[0] == -0.5)


def test_visage_all_points_variant_counts_islands():
    asr = [0, 0, 100, 100, 30, 10, 20, 100, 0, 0, 0]
    v = landscape.visage(asr, [AXIS], connected=False)
    assert v["basin_points"] == 8
    np.testing.assert_allclose(v["score"], (100 * 5 + 70 + 90 + 80) / 8)


def test_visage_all_safe_and_all_unsafe():
    safe = landscape.visage(np.zeros(11), [AXIS])
    assert safe["score"] == 100.0 and safe["basin_fraction"] == 1.0 and safe["clipped"]
    np.testing.assert_allclose(safe["width"], 1.0)
    unsafe = landscape.visage(np.full(11, 100.0), [AXIS])
    assert unsafe == {"score": 0.0, "basin_points": 0, "grid_points": 11, "basin_fraction": 0.0, "extent": None,
                      "width": 0.0, "clipped": False}
    # an unsafe model in a safe neighbourhood has no basin of its own
    hole = np.zeros(11)
    hole[5] = 100.0
    assert landscape.visage(hole, [AXIS])["score"] == 0.0
    assert landscape.visage(hole, [AXIS], connected=False)["basin_points"] == 10


def test_visage_2d():
    """The basin is the 4-connected region around the origin: a point touching it only diagonally
    and a far island stay out until a neighbour links them."""
    axis = np.linspace(-0.5, 0.5, 5)  # origin at (2, 2)
    asr = np.full((5, 5), 100.0)
    asr[2, 1:4] = [20, 0, 40]
    asr[1, 2] = 10
    asr[3, 4] = 0  # diagonal to (2, 3) only
    asr[4, 0] = 50  # island
    v = landscape.visage(asr, [axis, axis])
    np.testing.assert_allclose(v["score"], (80 + 100 + 60 + 90) / 4)
    assert v["basin_points"] == 4 and v["grid_points"] == 25 and not v["clipped"]
    np.testing.assert_allclose(v["extent"], [[-0.25, 0.0], [-0.25, 0.25]])
    np.testing.assert_allclose(v["width"], [0.25, 0.5])
    assert landscape.visage(asr, [axis, axis], connected=False)["basin_points"] == 6
    asr[3, 3] = 30  # links (3, 4), which lies on the grid's edge
    v = landscape.visage(asr, [axis, axis])
    assert v["basin_points"] == 6 and v["clipped"]
    np.testing.assert_allclose(v["score"], (80 + 100 + 60 + 90 + 70 + 100) / 6)
    with pytest.raises(ValueError, match="unfinished"):
        landscape.visage(np.full((5, 5), np.nan), [axis, axis])


def test_plots_write_pngs(tmp_path):
    """An overlay of two models with a checkpoint mark, a contour and a surface."""
    import matplotlib.image

    alphas = np.linspace(-0.5, 0.5, 5)
    landscape.plot_1d({"base": (alphas, [100, 20, 0, 40, 100]), "tuned": (alphas, [100, 90, 60, 100, 100], {0.5: "ft"})},
                      tmp_path / "one.png")
    landscape.plot_2d(alphas, alphas, np.add.outer(alphas**2, alphas**2) * 200, tmp_path / "c.png", tmp_path / "s.png")
    for name in ("one.png", "c.png", "s.png"):
        image = matplotlib.image.imread(tmp_path / name)
        assert image.ndim == 3 and min(image.shape[:2]) > 200 and image.std() > 0, name


# ----------------------------------------------------------------------------------------------
# End to end


def _prompts(n):
    with open(ADVBENCH, newline="") as f:
        return [row["goal"] for row, _ in zip(csv.DictReader(f), range(n))]


def _policy(path: Path, seed: int, tokenizer_texts, template=assets.POLICY_CHAT_TEMPLATE):
    tok = assets.make_tokenizer(path, tokenizer_texts, vocab_size=400, chat_template=template)
    model = _model(seed, tied=False, vocab=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                   pad_token_id=tok.pad_token_id)
    dss.models.save_pretrained(model, path)
    return path


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    """Two tiny chat policies (same tokenizer): the centre model and an interpolation target."""
    texts = _prompts(60) + [assets.POLICY_CHAT_TEMPLATE] * 5
    return [_policy(tmp_path_factory.mktemp(f"policy{s}"), s, texts) for s in (0, 1)]


def _config(model, **overrides):
    cfg = landscape.landscape_defaults()
    cfg.update({**dict(model=str(model), advbench=str(ADVBENCH), num_prompts=3, max_new_tokens=8, steps=4), **overrides})
    return cfg


def test_end_to_end_resume_extend_and_plots(policies, tmp_path, monkeypatch):
    """5-point 1D landscape from a config; the centre answers like the unperturbed model; a rerun
    after an interruption evaluates only the missing points; a finer grid reuses the shared ones;
    other settings are refused; a 2D landscape reuses the saved first direction."""
    calls = []
    real_generate = landscape.evaluator.generate_many
    monkeypatch.setattr(landscape.evaluator, "generate_many", lambda models, *a, **k: calls.extend([1] * len(models)) or real_generate(models, *a, **k))
    config = ml_collections.ConfigDict(dict(model=dict(path=str(policies[0])), landscape=_config("")))
    res = landscape.main(config, tmp_path)
    out = tmp_path / "landscape"
    points = read_jsonl(out / "points.jsonl")
    assert len(calls) == 5 and len(points) == 5 and res["axes"] == [np.linspace(-0.5, 0.5, 5).tolist()]
    for p in points:
        assert len(p["responses"]) == 3 and p["seconds"] > 0
        assert p["asr"] == p["asr_keyword"] == 100 * np.mean([attack_success(r) for r in p["responses"]])
    assert res["asr"] == [p["asr"] for p in sorted(points, key=lambda p: p["coeffs"])]
    assert res["visage"] == landscape.visage(res["asr"], res["axes"])
    assert set(res["seconds_per_point"]) == {"median", "max"}
    assert (tmp_path / "directions" / "random-seed0.safetensors").exists() and (out / "landscape_1d.png").exists()

    centre = next(p for p in points if p["coeffs"] == [0.0])
    tok = transformers.AutoTokenizer.from_pretrained(policies[0])
    evaluator = landscape.SafetyEvaluator(tok, _prompts(3), 8, [tok.eos_token_id])
    assert centre["responses"] == evaluator.responses([dss.models.load_pretrained(policies[0])])[0]
    assert any(p["responses"] != centre["responses"] for p in points)

    lines = (out / "points.jsonl").read_text().splitlines(keepends=True)
    (out / "points.jsonl").write_text("".join(lines[:2]) + lines[2][:30])  # interrupted mid-write
    calls.clear()
    again = landscape.main(config, tmp_path)
    assert len(calls) == 3 and again["asr"] == res["asr"] and again["visage"] == res["visage"]

    calls.clear()
    finer = landscape.run(_config(policies[0], steps=8), tmp_path)
    assert len(calls) == 4 and finer["asr"][::2] == res["asr"]

    with pytest.raises(ValueError, match="max_new_tokens"):
        landscape.run(_config(policies[0], max_new_tokens=9), tmp_path)

    saved = (tmp_path / "directions" / "random-seed0.safetensors").stat().st_mtime_ns
    plane = landscape.run(_config(policies[0], name="plane", directions=("random", "random"), steps=2,
                                  num_prompts=2), tmp_path)
    assert (tmp_path / "directions" / "random-seed0.safetensors").stat().st_mtime_ns == saved
    assert plane["directions"][0]["norm"] == res["directions"][0]["norm"]
    assert np.shape(plane["asr"]) == (3, 3) and plane["cosine"] is not None and not plane["orthogonalized"]
    assert plane["visage"] == landscape.visage(plane["asr"], plane["axes"])
    assert (tmp_path / "plane" / "landscape_2d_contour.png").exists()
    assert (tmp_path / "plane" / "landscape_2d_surface.png").exists()


def test_end_to_end_interpolation_with_overlay(policies, tmp_path, monkeypatch):
    """Base -> target: a = 1 answers like the target checkpoint; its curve is overlaid on another
    landscape's, both named and the target marked."""
    first = landscape.run(_config(policies[0], steps=2), tmp_path)
    plotted = []
    monkeypatch.setattr(landscape.job, "plot_1d", lambda curves, path, **kw: plotted.append(curves))
    res = landscape.run(_config(policies[0], name="interp", directions=(f"interp:{policies[1]}",),
                                grid_range=(0.0, 1.0), steps=2, compare=(str(tmp_path / "landscape"),)), tmp_path)
    points = {p["coeffs"][0]: p for p in read_jsonl(tmp_path / "interp" / "points.jsonl")}
    tok = transformers.AutoTokenizer.from_pretrained(policies[1])
    evaluator = landscape.SafetyEvaluator(tok, _prompts(3), 8, [tok.eos_token_id])
    assert points[1.0]["responses"] == evaluator.responses([dss.models.load_pretrained(policies[1])])[0]
    assert res["directions"][0]["kind"] == "interpolation"
    (curves,) = plotted
    assert list(curves) == [res["label"], f"{first['label']} (landscape)"]
    assert curves[res["label"]][2] == {1.0: policies[1].name}
    assert curves[f"{first['label']} (landscape)"][1] == first["asr"]
    # interpolations are recomputed from the checkpoints, not saved
    assert [p.name for p in (tmp_path / "directions").iterdir()] == ["random-seed0.safetensors"]


def test_end_to_end_guardrail_judge(policies, tmp_path):
    """judge = guardrail: the landscape's ASR is the guardrail's share of unsafe verdicts on the
    very responses stored, and the keyword ASR is kept beside it."""
    from dss.eval.guardrail_judge import GuardrailJudge

    guard = _policy(tmp_path / "guard", 7, _prompts(60) + [assets.LLAMA_GUARD_3_TEMPLATE] * 5,
                    template=assets.LLAMA_GUARD_3_TEMPLATE)
    cfg = _config(policies[0], judge="guardrail", steps=2, num_prompts=2)
    cfg.guardrail.path, cfg.guardrail.threshold = str(guard), 0.0  # a random guard's P(safe) is near 0.5
    res = landscape.run(cfg, tmp_path)
    judge = GuardrailJudge.from_pretrained(str(guard), threshold=0.0)
    for p in read_jsonl(tmp_path / "landscape" / "points.jsonl"):
        verdicts = judge([{"prompt": q, "response": r} for q, r in zip(_prompts(2), p["responses"])])
        assert p["unsafe_judge"] == [not v["safe"] for v in verdicts]
        assert p["asr"] == 100 * np.mean(p["unsafe_judge"]) and p["asr_keyword"] == 100.0
    assert res["judge"] == "guardrail" and res["asr"] == [0.0, 0.0, 0.0] and res["visage"]["score"] == 100.0


def test_points_in_one_batch_equal_points_one_by_one(policies, tmp_path):
    """Grid points decoded together (weights stacked, one vectorised generate) give exactly the
    responses of one-at-a-time evaluation."""
    one = landscape.run(_config(policies[0], steps=4), tmp_path / "one")
    many = landscape.run(_config(policies[0], steps=4, points_per_batch=3), tmp_path / "many")
    rows = lambda d: sorted(read_jsonl(d / "landscape" / "points.jsonl"), key=lambda p: p["coeffs"])
    assert [p["responses"] for p in rows(tmp_path / "one")] == [p["responses"] for p in rows(tmp_path / "many")]
    assert one["asr"] == many["asr"]

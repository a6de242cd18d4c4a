"""MetaLoss: input spec, evaluation, save/load round trips and refusals."""

import json
import zipfile

import pytest
import torch

from sb3_ml3 import InputSpec, MetaLoss, MetaLossSpecError


def test_spec_parsing_forms_agree():
    a = InputSpec.parse("obs:11, action:2, mean:2, std:2, goal:2")
    b = InputSpec.parse([("obs", 11), ("action", 2), ("mean", 2), ("std", 2), ("goal", 2)])
    c = InputSpec.parse({"obs": 11, "action": 2, "mean": 2, "std": 2, "goal": 2})
    assert a == b == c
    assert a.dim == 19 and a.names[-1] == "goal" and str(a) == "obs:11, action:2, mean:2, std:2, goal:2"


@pytest.mark.parametrize("bad", ["obs", "obs:0", "obs:2, obs:3", "", "1x:2"])
def test_spec_rejects_bad_text(bad):
    with pytest.raises(MetaLossSpecError):
        InputSpec.parse(bad)


def test_forward_shapes_and_call_styles():
    torch.manual_seed(0)
    loss = MetaLoss("y_pred:1, y_target:1", output="softplus")
    p, y = torch.randn(7, 1), torch.randn(7, 1)
    out = loss(p, y)
    assert out.shape == (7,)
    assert torch.equal(out, loss(y_pred=p, y_target=y))
    assert torch.equal(out, loss({"y_pred": p, "y_target": y}))
    assert torch.equal(out, loss(p.squeeze(-1), y.squeeze(-1)))  # width-1 fields may drop their last dim
    assert (out > 0).all()  # softplus bounds it below
    assert torch.allclose(loss.loss(p, y), out.mean())


def test_call_with_wrong_inputs_names_both_specs():
    loss = MetaLoss("obs:3, action:2")
    with pytest.raises(MetaLossSpecError, match=r"obs:3, action:2.*action:2.*width 4|width 4"):
        loss(obs=torch.zeros(5, 3), action=torch.zeros(5, 4))
    with pytest.raises(MetaLossSpecError, match="missing"):
        loss(obs=torch.zeros(5, 3))
    with pytest.raises(MetaLossSpecError, match="expects 2 inputs"):
        loss(torch.zeros(5, 3))


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(1)
    loss = MetaLoss("obs:4, action:2, goal:2", hidden_sizes=(16, 8), activation="elu", output="softplus",
                    metadata={"obs_rms": {"mean": [0.0, 1.0, 2.0, 3.0]}})
    path = tmp_path / "loss.zip"
    loss.save(path)
    loaded = MetaLoss.load(path, inputs="obs:4, action:2, goal:2")
    x = {"obs": torch.randn(9, 4), "action": torch.randn(9, 2), "goal": torch.randn(9, 2)}
    assert torch.equal(loss(x), loaded(x))
    assert loaded.metadata == loss.metadata and loaded.hidden_sizes == (16, 8) and loaded.output == "softplus"
    with zipfile.ZipFile(path) as archive:  # the spec is plain JSON a person can read
        assert json.loads(archive.read("meta_loss.json"))["inputs"] == [["obs", 4], ["action", 2], ["goal", 2]]


def test_load_refuses_mismatched_spec(tmp_path):
    path = tmp_path / "loss.zip"
    MetaLoss("obs:4, action:2").save(path)
    with pytest.raises(MetaLossSpecError) as info:
        MetaLoss.load(path, inputs="obs:11, action:2")
    assert "obs:4, action:2" in str(info.value) and "obs:11, action:2" in str(info.value)


def test_load_refuses_corrupted_files(tmp_path):
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(MetaLossSpecError, match="corrupted"):
        MetaLoss.load(garbage)
    with pytest.raises(FileNotFoundError):
        MetaLoss.load(tmp_path / "missing.zip")
    # a valid archive whose weights were damaged
    good = tmp_path / "good.zip"
    MetaLoss("a:1, b:1").save(good)
    with zipfile.ZipFile(good) as src:
        spec = src.read("meta_loss.json")
    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(damaged, "w") as dst:
        dst.writestr("meta_loss.json", spec)
        dst.writestr("phi.pt", b"\x00" * 64)
    with pytest.raises(MetaLossSpecError, match="corrupted"):
        MetaLoss.load(damaged)


def test_load_refuses_non_finite_weights(tmp_path):
    loss = MetaLoss("a:1, b:1")
    with torch.no_grad():
        loss.net[0].weight[0, 0] = float("nan")
    path = tmp_path / "nan.zip"
    loss.save(path)
    with pytest.raises(MetaLossSpecError, match="NaN"):
        MetaLoss.load(path)


def test_load_refuses_weights_of_another_architecture(tmp_path):
    small = MetaLoss("a:1, b:1", hidden_sizes=(4,))
    path = tmp_path / "x.zip"
    small.save(path)
    with zipfile.ZipFile(path) as src:
        config = json.loads(src.read("meta_loss.json"))
        weights = src.read("phi.pt")
    config["hidden_sizes"] = [5]
    with zipfile.ZipFile(path, "w") as dst:
        dst.writestr("meta_loss.json", json.dumps(config))
        dst.writestr("phi.pt", weights)
    with pytest.raises(MetaLossSpecError, match="do not fit"):
        MetaLoss.load(path)


def test_seeded_reset_is_deterministic():
    a, b = MetaLoss("a:1, b:1"), MetaLoss("a:1, b:1")
    a.reset_parameters(torch.Generator().manual_seed(3))
    b.reset_parameters(torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def _quadratic_inputs(n: int = 6) -> dict[str, torch.Tensor]:
    return {"obs": torch.randn(n, 3), "mean": torch.randn(n, 2), "action": torch.randn(n, 2)}


def test_quadratic_meta_loss_is_a_weighted_square_around_its_target():
    torch.manual_seed(2)
    loss = MetaLoss("obs:3, mean:2, action:2", hidden_sizes=(8,), quadratic=["mean"])
    x = _quadratic_inputs()
    q, target, weight = loss.quadratic_form(x)
    assert torch.equal(q, x["mean"]) and target.shape == weight.shape == (6, 2) and (weight > 0).all()
    # t and w are the net's two halves on the context (obs, action): the quadratic field is not an input to them
    out = loss.net(torch.cat([x["obs"], x["action"]], dim=-1))
    assert torch.allclose(target, out[:, :2]) and torch.allclose(weight, torch.nn.functional.softplus(out[:, 2:]))
    assert torch.allclose(loss(x), (weight * (x["mean"] - target) ** 2).sum(-1))
    # minimised (to zero) exactly at the target, with zero gradient there
    at_target = dict(x, mean=target.detach().clone().requires_grad_(True))
    value = loss(at_target).sum()
    (grad,) = torch.autograd.grad(value, at_target["mean"])
    assert value.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))
    assert (loss(x) > 0).all()


def test_quadratic_reference_moves_the_target_by_the_reference_field(tmp_path):
    torch.manual_seed(3)
    plain = MetaLoss("obs:3, mean:2, action:2", hidden_sizes=(8,), quadratic=["mean"])
    referenced = MetaLoss("obs:3, mean:2, action:2", hidden_sizes=(8,), quadratic=["mean"],
                          quadratic_reference={"mean": "action"})
    referenced.load_state_dict(plain.state_dict())
    x = _quadratic_inputs()
    _, t_plain, w_plain = plain.quadratic_form(x)
    _, t_ref, w_ref = referenced.quadratic_form(x)
    assert torch.allclose(t_ref, t_plain + x["action"]) and torch.equal(w_ref, w_plain)
    path = tmp_path / "quadratic.zip"  # the quadratic structure is part of the saved spec
    referenced.save(path)
    loaded = MetaLoss.load(path, inputs="obs:3, mean:2, action:2")
    assert loaded.quadratic == ("mean",) and loaded.quadratic_reference == {"mean": "action"}
    assert torch.equal(loaded(x), referenced(x))


def test_a_quadratic_losss_bounded_target_is_b_tanh_of_the_free_one_and_round_trips(tmp_path):
    torch.manual_seed(4)
    free = MetaLoss("obs:3, mean:2, action:2", hidden_sizes=(8,), quadratic=["mean"])
    with torch.no_grad():
        for p in free.net.parameters():
            p.normal_(std=3.0)
    bounded = MetaLoss.from_config({**free.config(), "target_bound": 0.9}, free.state_dict())
    x = _quadratic_inputs(32)
    _, raw, weight = free.quadratic_form(x)
    _, target, same_weight = bounded.quadratic_form(x)
    assert raw.abs().max() > 2 and target.abs().max() <= 0.9
    torch.testing.assert_close(target, 0.9 * torch.tanh(raw))
    torch.testing.assert_close(same_weight, weight)
    torch.testing.assert_close(bounded(x), (weight * (x["mean"] - target) ** 2).sum(-1))
    referenced = MetaLoss.from_config({**bounded.config(), "quadratic_reference": {"mean": "action"}},
                                      bounded.state_dict())  # the change from the reference is bounded
    torch.testing.assert_close(referenced.quadratic_form(x)[1], x["action"] + target)
    bounded.save(tmp_path / "bounded.zip")
    back = MetaLoss.load(tmp_path / "bounded.zip")
    assert back.target_bound == 0.9 and torch.equal(back(x), bounded(x))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(MetaLossSpecError, match="target_bound"):
            MetaLoss("obs:3, mean:2, action:2", quadratic=["mean"], target_bound=bad)
    with pytest.raises(MetaLossSpecError, match="target_bound"):  # a plain MLP loss has no target to bound
        MetaLoss("obs:3, mean:2, action:2", target_bound=1.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"quadratic": ["velocity"]}, "distinct input fields"),
    ({"quadratic": ["mean", "mean"]}, "distinct input fields"),
    ({"quadratic": ["obs", "mean", "action"]}, "at least one input field that is not quadratic"),
    ({"quadratic": ["mean"], "quadratic_reference": {"mean": "obs"}}, "same width"),
    ({"quadratic": ["mean"], "quadratic_reference": {"action": "mean"}}, "must map quadratic fields"),
])
def test_quadratic_spec_refusals(kwargs, match):
    with pytest.raises(MetaLossSpecError, match=match):
        MetaLoss("obs:3, mean:2, action:2", **kwargs)


def test_quadratic_form_of_a_plain_meta_loss_is_refused():
    with pytest.raises(MetaLossSpecError, match="needs a quadratic meta-loss"):
        MetaLoss("obs:3, mean:2").quadratic_form(obs=torch.zeros(1, 3), mean=torch.zeros(1, 2))

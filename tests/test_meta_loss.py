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

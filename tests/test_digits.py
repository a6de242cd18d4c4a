"""Digit classification (paper Sec. IV.A.1, Fig. 2 bottom): LeNet, the data loaders, a short seeded run, the CLI."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sb3_ml3 import MetaLoss
from sb3_ml3.cli import main as cli_main
from sb3_ml3.supervised.core import init_params, meta_test, stack_params
from sb3_ml3.supervised.datasets import (
    MNIST_FILES,
    find_mnist_file,
    load_digits_images,
    load_images,
    load_mnist_images,
    read_idx,
    write_idx,
)
from sb3_ml3.supervised.digits import (
    DigitsConfig,
    DigitsExperiment,
    cross_entropy,
    error_rate,
    pair_task,
    run_digits,
    sample_pairs,
)
from sb3_ml3.supervised.lenet import LeNet


def write_tiny_mnist(folder, n_train_per_digit=6, n_test_per_digit=4, gz=False, seed=0):
    """MNIST-format IDX files of random 28x28 images whose brightness tells the digit (learnable, tiny)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train_per_digit), ("test", n_test_per_digit)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), n)
        images = rng.integers(0, 40, size=(len(labels), 28, 28)) + labels[:, None, None] * 20
        arrays[f"{split}_images"] = images.astype(np.uint8)
        arrays[f"{split}_labels"] = labels
    for key, stem in MNIST_FILES.items():
        write_idx(folder / (stem + (".gz" if gz else "")), arrays[key])
    return arrays


# ------------------------------------------------------------------------------------------ LeNet
@pytest.mark.parametrize("size, n_features", [(8, 64), (28, 400)])
def test_lenet_shapes(size, n_features):
    net = LeNet(size, n_classes=2)
    assert net.n_features == n_features
    assert net(torch.zeros(5, 1, size, size)).shape == (5, 2)
    assert net(torch.zeros(3, size, size)).shape == (3, 2)  # channel dimension added
    assert LeNet(size, n_classes=10)(torch.zeros(2, size, size)).shape == (2, 10)
    # LeNet-5 on MNIST: 6 and 16 feature maps of 5x5 kernels, then 400 -> 120 -> 84 -> 2
    if size == 28:
        assert net.features[0].kernel_size == (5, 5) and net.classifier[0].in_features == 400
        assert sum(p.numel() for p in net.parameters()) == 61_706 - 8 * 85  # LeNet-5 with 2 outputs, not 10


def test_lenet_refuses_wrong_shapes():
    net = LeNet(8)
    with pytest.raises(ValueError, match=r"expects images of shape \(batch, 1, 8, 8\)"):
        net(torch.zeros(4, 1, 28, 28))
    with pytest.raises(ValueError, match="expects images"):
        net(torch.zeros(4, 3, 8, 8))
    with pytest.raises(ValueError, match="at least 8x8"):
        LeNet(4)


# ------------------------------------------------------------------------------------------ data
def test_bundled_digits_split_and_standardised():
    data = load_digits_images(torch.Generator().manual_seed(0))
    assert data.image_size == 8 and data.train_images.dtype == torch.float32
    assert len(data.train_labels) + len(data.test_labels) == 1797
    assert torch.bincount(data.train_labels).min() >= 87  # every class halved
    assert abs(float(data.train_images.mean())) < 1e-4 and abs(float(data.train_images.std()) - 1) < 1e-3
    other = load_digits_images(torch.Generator().manual_seed(1))
    assert not torch.equal(data.train_labels, other.train_labels) or not torch.equal(data.train_images, other.train_images)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_reader_round_trip(tmp_path, gz):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / ("a.idx" + (".gz" if gz else "")), array)
    np.testing.assert_array_equal(read_idx(path), array)
    raw = gzip.decompress(Path(path).read_bytes()) if gz else Path(path).read_bytes()
    assert raw[:4] == bytes([0, 0, 8, 3]) and raw[4:8] == (2).to_bytes(4, "big")  # the MNIST header layout
    ints = np.array([[-1, 70000]], dtype=np.int32)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "b.idx", ints)), ints)


def test_idx_reader_refuses_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"PK\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    good = Path(write_idx(tmp_path / "good", np.zeros((4, 2), dtype=np.uint8))).read_bytes()
    (tmp_path / "short").write_bytes(good[:-1])
    with pytest.raises(ValueError, match=r"says \(4, 2\)"):
        read_idx(tmp_path / "short")


def test_mnist_loader_on_generated_files(tmp_path):
    arrays = write_tiny_mnist(tmp_path / "MNIST" / "raw", gz=True)  # torchvision's layout under --data-dir
    data = load_mnist_images(tmp_path)
    assert data.name == "mnist" and data.image_size == 28
    assert data.train_images.shape == (60, 28, 28) and data.test_images.shape == (40, 28, 28)
    np.testing.assert_array_equal(data.test_labels.numpy(), arrays["test_labels"])
    assert abs(float(data.train_images.mean())) < 1e-4
    # same order of images: standardising is monotone
    flat = arrays["train_images"].reshape(60, -1).astype(float)
    assert np.argmax(flat.sum(1)) == int(data.train_images.flatten(1).sum(1).argmax())
    assert find_mnist_file(tmp_path, "t10k-labels-idx1-ubyte").endswith("MNIST/raw/t10k-labels-idx1-ubyte.gz")


def test_missing_mnist_files_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="Nothing is downloaded"):
        load_mnist_images(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_mnist_images(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="needs --data-dir"):
        load_images("mnist", torch.Generator())


def test_unknown_data_set_is_refused():
    with pytest.raises(ValueError, match=r"Unknown data set 'cifar'.*digits.*mnist"):
        DigitsConfig(data="cifar")
    with pytest.raises(ValueError, match="Unknown data set"):
        load_images("cifar", torch.Generator())
    with pytest.raises(ValueError, match="meta_inputs"):
        DigitsConfig(meta_inputs="probs")


# ------------------------------------------------------------------------------------------ tasks
def test_pairs_and_tasks():
    generator = torch.Generator().manual_seed(0)
    pairs = sample_pairs(5, generator)
    assert len({frozenset(p) for p in pairs}) == 5 and all(a != b for a, b in pairs)
    data = load_digits_images(torch.Generator().manual_seed(0))
    train = pair_task(data, pairs[0], 40, generator, query_split="train")
    x, y = train.support
    assert x.shape == (80, 8, 8) and y.shape == (80, 2) and torch.equal(y.sum(0), torch.tensor([40.0, 40.0]))
    flat = lambda t: {tuple(row.tolist()) for row in t.flatten(1)}
    assert not flat(train.support[0]) & flat(train.query[0])  # disjoint support and query
    with pytest.raises(ValueError, match="lower --n-per-class"):
        pair_task(data, pairs[1], 100, generator)


def test_losses_and_error():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    one_hot = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert float(error_rate(logits, one_hot)) == pytest.approx(2 / 3)
    expected = torch.nn.functional.cross_entropy(logits, one_hot.argmax(-1))
    assert float(cross_entropy(logits, one_hot)) == pytest.approx(float(expected))


def test_meta_test_on_cross_entropy_is_plain_sgd():
    data = load_digits_images(torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    task = pair_task(data, (3, 8), 10, generator)
    net = LeNet(8)
    theta = init_params(net, generator)
    train_loss = lambda p, b: cross_entropy(torch.func.functional_call(net, p, (b[0],)), b[1])
    trace = meta_test(net, None, [task], stack_params([theta]), lr=0.05, steps=4, train_loss_fn=train_loss,
                      metric_fn=train_loss)
    net.load_state_dict(theta)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for _ in range(4):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(task.support[0]), task.support[1].argmax(-1)).backward()
        opt.step()
    final = torch.nn.functional.cross_entropy(net(task.query[0]), task.query[1].argmax(-1))
    assert torch.allclose(trace[0, -1], final, rtol=1e-4)


# ------------------------------------------------------------------------------------------ experiment
def test_short_seeded_run_beats_cross_entropy():
    # a faster recipe than the default (meta-lr 1e-2, unbounded output, 20 images per class, 600 outer steps);
    # the step size is the paper's alpha = 0.001 for both ML3 and SGD on cross-entropy, 100 steps at meta-test
    config = DigitsConfig(n_outer=600, eval_every=150, n_per_class=20, meta_lr=1e-2, meta_output="identity")
    result = run_digits([0], config)
    s = result["summary"]
    # measured: ML3 0.025 vs cross-entropy 0.49 (held-out error on 4 unseen pairs after 100 steps)
    assert s["mean_final_error_ml3"] < 0.5 * s["mean_final_error_task_loss"], s
    assert s["mean_final_error_task_loss"] > 0.4  # SGD on cross-entropy at 0.001 hardly moves in 100 steps
    seed = result["per_seed"][0]
    assert len(seed["test_error_trace_ml3"]) == 101 and len(seed["test_pairs"]) == 4
    assert min(seed["meta_train_error_ml3"]) < 0.5 * seed["meta_train_error_task_loss"]  # Fig. 2c
    assert seed["meta_tested_iteration"] == seed["meta_train_iterations"][int(np.argmin(seed["meta_train_error_ml3"]))]


def test_same_seed_same_result():
    config = DigitsConfig(n_outer=6, eval_every=3, test_steps=3, n_per_class=5)
    a, b = (DigitsExperiment(config).run_seed(2) for _ in range(2))
    assert a["test_error_trace_ml3"] == b["test_error_trace_ml3"] and a["test_pairs"] == b["test_pairs"]
    assert a["test_ce_trace_ml3"] != DigitsExperiment(config).run_seed(3)["test_ce_trace_ml3"]


def test_cli_quick_writes_results_figures_and_losses(tmp_path, capsys):
    out = tmp_path / "digits"
    assert cli_main(["digits", "--quick", "--seeds", "0", "1", "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["summary"]["seeds"] == [0, 1] and results["config"]["n_outer"] == 100
    assert len(results["per_seed"][1]["test_ce_trace_task_loss"]) == 21
    for name in ("digits_meta_test_error.png", "digits_meta_test_ce.png", "digits_meta_train.png"):
        assert (out / name).stat().st_size > 5000
    loaded = MetaLoss.load(out / "meta_loss_seed1.zip", inputs="log_probs:2, label:2")
    assert loaded.metadata["experiment"] == "digits"
    assert "ratio" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:  # earlier results are kept unless --force
        cli_main(["digits", "--quick", "--out", str(out), "--no-progress"])
    assert exc.value.code == 2


def test_cli_mnist_on_generated_files(tmp_path):
    write_tiny_mnist(tmp_path / "data")
    out = tmp_path / "mnist"
    assert cli_main(["digits", "--data", "mnist", "--data-dir", str(tmp_path / "data"), "--seeds", "0",
                     "--n-outer", "4", "--eval-every", "2", "--test-steps", "3", "--n-per-class", "3",
                     "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["data"] == "mnist" and len(results["per_seed"][0]["test_error_trace_ml3"]) == 4


@pytest.mark.parametrize("argv, message", [
    (["--data", "cifar"], "Unknown data set 'cifar'"),
    (["--data", "mnist"], "needs --data-dir"),
    (["--data", "mnist", "--data-dir", "{tmp}"], "Nothing is downloaded"),
    (["--data-dir", "{tmp}"], "only read with --data mnist"),
])
def test_cli_errors_say_what_to_do(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as exc:
        cli_main(["digits", "--quick", "--out", str(tmp_path / "out"), "--no-progress", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "results.json").exists()

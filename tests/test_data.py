"""Data loaders, tested on small files written here in each real on-disk format."""

from __future__ import annotations

import gzip
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from bayestensor.data import (
    DEFAULT_FASHION_MNIST_DIR,
    KAGGLE_CARDINALITIES,
    ClickBatch,
    CriteoKaggle,
    DataFormatError,
    DataNotFoundError,
    SyntheticClicks,
    load_cifar10,
    load_cifar_batch,
    load_fashion_mnist,
    load_mnist,
    parse_lines,
    read_idx,
    split_bounds,
)

IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


# ---------------------------------------------------------------------------------------------- IDX
def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path: Path, payload: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def write_idx_set(directory: Path, gz: bool, n_train: int = 7, n_test: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for key, arr in arrays.items():
        write(directory / IDX_NAMES[key], idx_bytes(arr), gz)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_reads_back_what_was_written(tmp_path, gz):
    arrays = write_idx_set(tmp_path, gz)
    splits = load_mnist(tmp_path)
    for part in ("train", "test"):
        images, labels = getattr(splits, part)
        assert images.dtype == torch.float32 and images.shape == arrays[f"{part}_images"].shape
        assert labels.dtype == torch.int64
        np.testing.assert_array_equal((images.numpy() * 255).round().astype(np.uint8), arrays[f"{part}_images"])
        np.testing.assert_array_equal(labels.numpy(), arrays[f"{part}_labels"])
        assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0


def test_load_fashion_mnist_explicit_dir_and_torchvision_layout(tmp_path):
    arrays = write_idx_set(tmp_path / "FashionMNIST" / "raw", gz=True, seed=3)
    splits = load_fashion_mnist(tmp_path)
    np.testing.assert_array_equal(splits.test.labels.numpy(), arrays["test_labels"])


@pytest.mark.parametrize(
    ("code", "dtype"),
    [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32), (0x0D, np.float32), (0x0E, np.float64)],
)
def test_read_idx_all_dtypes(tmp_path, code, dtype):
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype) if code != 0x08 else np.arange(24, dtype=np.uint8)
    path = write(tmp_path / "x-idx", idx_bytes(arr, code), gz=False)
    got = read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, arr)


def test_truncated_idx_names_file_and_byte_counts(tmp_path):
    arr = np.zeros((4, 28, 28), dtype=np.uint8)
    path = write(tmp_path / "train-images-idx3-ubyte", idx_bytes(arr)[:-10], gz=False)
    with pytest.raises(DataFormatError, match=r"truncated IDX payload: expected 3136 bytes .* got 3126 bytes") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_truncated_gzip_stream(tmp_path):
    arr = np.arange(4 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(4, 28, 28)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(arr))[:-20])
    with pytest.raises(DataFormatError, match="gzip") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_bad_magic_and_dtype_code(tmp_path):
    good = idx_bytes(np.zeros((2, 28, 28), np.uint8))
    bad_magic = write(tmp_path / "a", b"\x12\x34" + good[2:], gz=False)
    with pytest.raises(DataFormatError, match=r"bad IDX magic number: expected 0x0000.*got 0x1234"):
        read_idx(bad_magic)
    bad_code = write(tmp_path / "b", good[:2] + b"\x07" + good[3:], gz=True)
    with pytest.raises(DataFormatError, match=r"unknown IDX dtype code.*got 0x07"):
        read_idx(bad_code)
    with pytest.raises(DataFormatError, match="truncated IDX header"):
        read_idx(write(tmp_path / "c", good[:9], gz=False))


def test_wrong_shape_and_count_mismatch(tmp_path):
    write_idx_set(tmp_path, gz=False)
    (tmp_path / IDX_NAMES["train_images"]).write_bytes(idx_bytes(np.zeros((7, 28, 27), np.uint8)))
    with pytest.raises(DataFormatError, match=r"expected images of shape \(N, 28, 28\), got shape \(7, 28, 27\)"):
        load_mnist(tmp_path)
    write_idx_set(tmp_path, gz=False)
    (tmp_path / IDX_NAMES["test_labels"]).write_bytes(idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(DataFormatError, match="expected 3 labels"):
        load_mnist(tmp_path)


def test_missing_dir_and_missing_files(tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        load_mnist(tmp_path / "nope")
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    assert str(tmp_path / "nope") in msg and "does not exist" in msg and "never downloads" in msg
    for name in IDX_NAMES.values():
        assert name + "[.gz]" in msg
    write_idx_set(tmp_path, gz=True)
    (tmp_path / (IDX_NAMES["test_labels"] + ".gz")).unlink()
    with pytest.raises(DataNotFoundError, match=r"missing: t10k-labels-idx1-ubyte\[\.gz\]\)") as e:
        load_mnist(tmp_path)
    assert e.value.missing == ["t10k-labels-idx1-ubyte[.gz]"]


@pytest.mark.skipif(not DEFAULT_FASHION_MNIST_DIR.is_dir(), reason="Fashion-MNIST not installed")
def test_real_fashion_mnist():
    splits = load_fashion_mnist()
    assert splits.train.images.shape == (60000, 28, 28) and splits.train.labels.shape == (60000,)
    assert splits.test.images.shape == (10000, 28, 28) and splits.test.labels.shape == (10000,)
    assert torch.bincount(splits.train.labels).tolist() == [6000] * 10
    assert torch.bincount(splits.test.labels).tolist() == [1000] * 10
    assert float(splits.train.images.max()) == 1.0 and float(splits.train.images.min()) == 0.0


# ---------------------------------------------------------------------------------------------- CIFAR
def write_cifar(directory: Path, n: int = 4, seed: int = 0, str_keys: bool = False) -> dict[str, tuple]:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        k = (lambda s: s) if str_keys else (lambda s: s.encode())
        batch = {k("batch_label"): b"x", k("labels"): labels, k("data"): data, k("filenames"): [b"a.png"] * n}
        with open(directory / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        written[name] = (data, labels)
    return written


@pytest.mark.parametrize("subdir", ["", "cifar-10-batches-py"])
def test_load_cifar10_reads_back(tmp_path, subdir):
    written = write_cifar(tmp_path / subdir if subdir else tmp_path)
    splits = load_cifar10(tmp_path)
    assert splits.train.images.shape == (20, 3, 32, 32) and splits.train.images.dtype == torch.float32
    assert splits.test.labels.dtype == torch.int64
    data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    np.testing.assert_array_equal((splits.train.images.numpy() * 255).round().reshape(20, -1), data)
    assert splits.train.labels.tolist() == labels
    # channel-major layout: the first 1024 values of a row are the red plane
    np.testing.assert_array_equal(
        (splits.test.images[0, 0].numpy() * 255).round(), written["test_batch"][0][0, :1024].reshape(32, 32)
    )


def test_cifar_str_keys_and_errors(tmp_path):
    write_cifar(tmp_path, str_keys=True)
    assert load_cifar_batch(tmp_path / "test_batch").images.shape == (4, 3, 32, 32)
    bad = tmp_path / "bad"
    with open(bad, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 1]}, f)
    with pytest.raises(DataFormatError, match=r"expected the keys 'data' and 'labels', got \['data', 'fine_labels'\]"):
        load_cifar_batch(bad)
    with open(bad, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataFormatError, match=r"shape \(N, 3072\), got uint8 \(2, 3000\)"):
        load_cifar_batch(bad)
    with open(bad, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1, 2]}, f)
    with pytest.raises(DataFormatError, match="expected 2 integer 'labels'"):
        load_cifar_batch(bad)
    bad.write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataFormatError, match="could not unpickle"):
        load_cifar_batch(bad)


def test_cifar_numpy1_pickles_as_in_the_official_archive(tmp_path):
    # the official batches were pickled by NumPy 1.x, whose arrays refer to numpy.core.multiarray
    data = np.arange(2 * 3072).astype(np.uint8).reshape(2, 3072)
    blob = pickle.dumps({b"data": data, b"labels": [3, 4]}, protocol=2)
    blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in blob
    (tmp_path / "test_batch").write_bytes(blob)
    got = load_cifar_batch(tmp_path / "test_batch")
    assert got.labels.tolist() == [3, 4]
    np.testing.assert_array_equal((got.images.numpy() * 255).round().reshape(2, -1), data)


def test_cifar_refuses_arbitrary_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "test_batch"
    with open(path, "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(DataFormatError, match=r"refusing to load global builtins\.print"):
        load_cifar_batch(path)


def test_cifar_missing(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataNotFoundError, match=r"CIFAR-10 data not found.*missing: data_batch_3\)"):
        load_cifar10(tmp_path)


# ---------------------------------------------------------------------------------------------- Criteo
def criteo_rows(n: int, seed: int = 0) -> list[tuple[int, list[int | None], list[str | None]]]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        dense = [None if rng.random() < 0.2 else int(rng.integers(-3, 5000)) for _ in range(13)]
        cats = [None if rng.random() < 0.2 else f"{int(rng.integers(0, 2**32)):08x}" for _ in range(26)]
        rows.append((int(rng.integers(0, 2)), dense, cats))
    return rows


def row_line(row) -> str:
    label, dense, cats = row
    fields = [str(label), *("" if d is None else str(d) for d in dense), *("" if c is None else c for c in cats)]
    return "\t".join(fields)


def write_criteo(path: Path, rows, gz: bool = False) -> Path:
    text = "".join(row_line(r) + "\n" for r in rows)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def expected_batch(rows, cards=KAGGLE_CARDINALITIES):
    dense = np.array([[math.log1p(max(d or 0, 0)) for d in r[1]] for r in rows], dtype=np.float32)
    sparse = np.array([[int(c, 16) % m if c else 0 for c, m in zip(r[2], cards, strict=True)] for r in rows])
    return dense, sparse, np.array([r[0] for r in rows], dtype=np.float32)


def cat(batches: list[ClickBatch]) -> ClickBatch:
    return ClickBatch(*(torch.cat(parts) for parts in zip(*batches, strict=True)))


def test_kaggle_cardinalities():
    assert len(KAGGLE_CARDINALITIES) == 26
    assert sum(KAGGLE_CARDINALITIES) == 33_762_577
    top5 = sorted(range(26), key=lambda t: -KAGGLE_CARDINALITIES[t])[:5]
    assert sorted(top5) == [2, 3, 11, 15, 20]
    assert [KAGGLE_CARDINALITIES[t] for t in (2, 3, 11, 15, 20)] == [10131227, 2202608, 8351593, 5461306, 7046547]


@pytest.mark.parametrize("gz", [False, True])
def test_criteo_reads_back_with_dlrm_preprocessing(tmp_path, gz):
    rows = criteo_rows(50)
    write_criteo(tmp_path / "train.txt", rows, gz=gz)
    data = CriteoKaggle(tmp_path, batch_size=16, split="all")
    batches = list(data)
    assert len(batches) == len(data) == 4 and [len(b.label) for b in batches] == [16, 16, 16, 2]
    got = cat(batches)
    assert got.dense.dtype == torch.float32 and got.sparse.dtype == torch.int64 and got.label.dtype == torch.float32
    dense, sparse, label = expected_batch(rows)
    np.testing.assert_allclose(got.dense.numpy(), dense, rtol=1e-6)
    np.testing.assert_array_equal(got.sparse.numpy(), sparse)
    np.testing.assert_array_equal(got.label.numpy(), label)
    assert (got.sparse < torch.tensor(KAGGLE_CARDINALITIES)).all() and (got.sparse >= 0).all()
    # missing fields map to 0 and negative counts clamp to log1p(0) = 0
    assert got.dense[torch.tensor([[d is None or d <= 0 for d in r[1]] for r in rows])].eq(0).all()


def test_a_truncated_gzipped_criteo_file_is_named(tmp_path):
    path = write_criteo(tmp_path / "train.txt", criteo_rows(200), gz=True)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataFormatError, match=r"train.txt.gz'.*damaged or truncated"):
        list(CriteoKaggle(tmp_path, batch_size=16, split="all"))


def test_criteo_split_is_last_seventh_of_window(tmp_path):
    rows = criteo_rows(100, seed=1)
    write_criteo(tmp_path / "train.txt", rows)
    assert split_bounds(70, "train") == (0, 60) and split_bounds(70, "test") == (60, 70)
    train = CriteoKaggle(tmp_path, batch_size=8, split="train", max_rows=70)
    test = CriteoKaggle(tmp_path, batch_size=8, split="test", max_rows=70)
    assert (train.num_rows, test.num_rows) == (60, 10)
    np.testing.assert_array_equal(cat(list(train)).sparse.numpy(), expected_batch(rows[:60])[1])
    np.testing.assert_array_equal(cat(list(test)).sparse.numpy(), expected_batch(rows[60:70])[1])
    whole = CriteoKaggle(tmp_path / "train.txt", batch_size=32, split="test")  # the file itself; no max_rows
    assert whole.num_rows == 14 and len(whole) == 1
    np.testing.assert_array_equal(cat(list(whole)).label.numpy(), expected_batch(rows[86:])[2])
    # re-iterable, deterministic
    assert torch.equal(cat(list(train)).dense, cat(list(train)).dense)


def test_criteo_drop_last_and_ranks(tmp_path):
    rows = criteo_rows(45, seed=2)
    write_criteo(tmp_path / "train.txt", rows)
    full = cat(list(CriteoKaggle(tmp_path, batch_size=5, split="all")))
    shards = [list(CriteoKaggle(tmp_path, batch_size=5, split="all", rank=r, world_size=2)) for r in range(2)]
    assert [len(s) for s in shards] == [5, 4]
    interleaved = [shards[b % 2][b // 2] for b in range(9)]
    assert torch.equal(cat(interleaved).sparse, full.sparse)
    assert len(CriteoKaggle(tmp_path, batch_size=10, split="all", drop_last=True)) == 4


def test_criteo_custom_cardinalities_and_no_trailing_newline(tmp_path):
    rows = criteo_rows(5, seed=3)
    (tmp_path / "train.txt").write_text("\n".join(row_line(r) for r in rows))  # no final newline
    cards = [7] * 26
    got = cat(list(CriteoKaggle(tmp_path, split="all", cardinalities=cards)))
    np.testing.assert_array_equal(got.sparse.numpy(), expected_batch(rows, cards)[1])
    assert int(got.sparse.max()) < 7


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda f: f[:-1], r"line 4: expected 40 tab-separated fields .* got 39 fields"),
        (lambda f: ["2", *f[1:]], r"line 4: field 1 \(label\): expected 0 or 1, got '2'"),
        (lambda f: [*f[:3], "x7", *f[4:]], r"line 4: field 4 \(I3\): expected an integer or an empty field, got 'x7'"),
        (lambda f: [*f[:20], "zz", *f[21:]], r"line 4: field 21 \(C7\): expected hexadecimal or empty, got 'zz'"),
        (
            lambda f: [*f[:3], "1_05", *f[4:]],
            r"line 4: field 4 \(I3\): expected an integer or an empty field, got '1_05'",
        ),
    ],
)
def test_criteo_malformed_line_names_line_number(tmp_path, mutate, pattern):
    lines = [row_line(r) for r in criteo_rows(6, seed=4)]
    lines[3] = "\t".join(mutate(lines[3].split("\t")))
    path = tmp_path / "train.txt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=pattern) as e:
        list(CriteoKaggle(tmp_path, batch_size=2, split="all"))
    assert e.value.line == 4 and str(path) in str(e.value)


def test_parse_lines_directly():
    rows = criteo_rows(3, seed=5)
    got = parse_lines([row_line(r).encode() + b"\r\n" for r in rows], KAGGLE_CARDINALITIES)
    np.testing.assert_array_equal(got.sparse.numpy(), expected_batch(rows)[1])
    with pytest.raises(ValueError, match="expected 26 positive table cardinalities"):
        parse_lines([], [10] * 25)


def test_vectorised_and_line_by_line_parsers_agree(monkeypatch):
    import bayestensor.data.criteo as criteo

    rows = criteo_rows(300, seed=6)
    rows[0] = (1, [None] * 13, [None] * 26)
    rows[1] = (0, [-1, 0, 2**40, *([7] * 10)], ["ffffffff", "0", "A1b2C3d4", *(["00000001"] * 23)])
    lines = [row_line(r).encode() + (b"\r\n" if i % 2 else b"\n") for i, r in enumerate(rows)]
    fast = criteo._parse_fast(lines, KAGGLE_CARDINALITIES)
    assert fast is not None
    monkeypatch.setattr(criteo, "_parse_fast", lambda *args: None)
    slow = parse_lines(lines, KAGGLE_CARDINALITIES)
    for a, b in zip(fast, slow, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)
    np.testing.assert_array_equal(slow.sparse.numpy(), expected_batch(rows)[1])
    # inputs the vectorised path declines still parse (leniently, as Python's int() does)
    odd = parse_lines([b"1\t+5" + b"\t" * 13 + b"\t".join([b"0x1F"] * 26)], [1000] * 26)
    assert odd.dense[0, 0] == pytest.approx(math.log(6)) and (odd.sparse == 31).all()


def test_criteo_missing(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"Criteo Kaggle data not found.*train\.txt\[\.gz\]"):
        CriteoKaggle(tmp_path)


# ---------------------------------------------------------------------------------------------- synthetic
def test_synthetic_clicks_shapes_ranges_and_determinism():
    data = SyntheticClicks(num_batches=3, batch_size=256, seed=7)
    batches = list(data)
    assert len(batches) == len(data) == 3
    b = batches[1]
    assert b.dense.shape == (256, 13) and b.dense.dtype == torch.float32 and (b.dense >= 0).all()
    assert b.sparse.shape == (256, 26) and b.sparse.dtype == torch.int64
    assert b.label.shape == (256,) and b.label.dtype == torch.float32 and set(b.label.unique().tolist()) <= {0.0, 1.0}
    cards = torch.tensor(KAGGLE_CARDINALITIES)
    assert ((b.sparse >= 0) & (b.sparse < cards)).all()
    again = SyntheticClicks(num_batches=3, batch_size=256, seed=7).batch(1)  # fresh object, random access
    assert all(torch.equal(x, y) for x, y in zip(b, again, strict=True))
    other = SyntheticClicks(num_batches=3, batch_size=256, seed=8).batch(1)
    assert not torch.equal(b.sparse, other.sparse)
    assert not torch.equal(b.sparse, batches[0].sparse)
    test = SyntheticClicks(num_batches=3, batch_size=256, seed=7, split="test").batch(1)
    assert not torch.equal(b.sparse, test.sparse)
    validation = SyntheticClicks(num_batches=3, batch_size=256, seed=7, split="validation").batch(1)
    assert not torch.equal(b.sparse, validation.sparse) and not torch.equal(test.sparse, validation.sparse)
    shard = list(SyntheticClicks(num_batches=3, batch_size=256, seed=7, rank=1, world_size=2))
    assert len(shard) == 1 and torch.equal(shard[0].dense, b.dense)


def test_synthetic_clicks_heavy_tailed_and_learnable():
    data = SyntheticClicks(num_batches=1, batch_size=4096, seed=0)
    b = data.batch(0)
    assert 0.2 < float(b.label.mean()) < 0.32  # near Criteo's 25.6% click rate
    # heavy tail: the most popular id of the largest table recurs far more than uniform sampling allows
    _, counts = torch.unique(b.sparse[:, 2], return_counts=True)
    assert int(counts.max()) > 50 and len(counts) > 1000
    # the labels follow the teacher: its logits separate clicks from non-clicks
    logits = data.teacher_logits(b.dense, b.sparse)
    assert float(logits[b.label == 1].mean()) > float(logits[b.label == 0].mean()) + 0.5


def test_synthetic_tt_teacher_is_a_planted_tensor_train():
    cards = [1000] * 26  # row modes (10, 10, 10)
    data = SyntheticClicks(num_batches=1, batch_size=4096, seed=3, cardinalities=cards, teacher="tt", teacher_tt_rank=3)
    table = data.teacher_table(5)  # (1000, r = 8)
    assert table.shape == (1000, 8) and 0.6 < table.std() < 1.6 and abs(table.mean()) < 0.2
    grid = table.reshape(10, 10, 10, 8)
    # the TT ranks of the planted table are its unfolding ranks: (3, 3) between row modes, 8 at the columns
    assert np.linalg.matrix_rank(grid.reshape(10, 800)) == 3
    assert np.linalg.matrix_rank(grid.reshape(100, 80)) == 3
    assert np.linalg.matrix_rank(table) == 8
    b = data.batch(0)
    assert torch.equal(b.sparse, SyntheticClicks(1, 4096, seed=3, cardinalities=cards, teacher="tt").batch(0).sparse)
    rows = data.teacher_embedding(b.sparse)[:, 5, :]
    np.testing.assert_allclose(rows, table[b.sparse[:, 5].numpy()])  # lookups agree with the table
    logits = data.teacher_logits(b.dense, b.sparse)
    assert float(logits[b.label == 1].mean()) > float(logits[b.label == 0].mean()) + 0.5
    other = SyntheticClicks(1, 64, seed=4, cardinalities=cards, teacher="tt", teacher_tt_rank=3).teacher_table(5)
    assert not np.allclose(other, table)
    with pytest.raises(ValueError, match=r"teacher must be one of \('hashed', 'tt'\), got 'lowrank'"):
        SyntheticClicks(1, teacher="lowrank")
    with pytest.raises(ValueError, match="teacher_tt_rank >= 1"):
        SyntheticClicks(1, teacher="tt", teacher_tt_rank=0)


def test_synthetic_small_tables_and_validation():
    cards = [1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597, 1, 1, 2, 2, 3, 3, 4, 4, 5, 6]
    b = SyntheticClicks(num_batches=1, batch_size=512, seed=1, cardinalities=cards, zipf_exponent=1.0).batch(0)
    assert ((b.sparse >= 0) & (b.sparse < torch.tensor(cards))).all()
    assert (b.sparse[:, 0] == 0).all()
    with pytest.raises(ValueError, match="26 positive table cardinalities"):
        SyntheticClicks(1, cardinalities=[5] * 3)
    with pytest.raises(ValueError, match="split must be one of"):
        SyntheticClicks(1, split="valid")

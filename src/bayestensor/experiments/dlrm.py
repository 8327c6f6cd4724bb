"""``criteo-dlrm``: DLRM on Criteo Kaggle clicks, or on synthetic clicks at the true table sizes (``--synthetic``).

Real data: ``train.txt`` (or ``.gz``) of the Kaggle display-advertising challenge in ``--data-dir``,
preprocessed as the DLRM reference does (:class:`~bayestensor.data.CriteoKaggle`: hashed ids,
``log(1 + x)`` dense features, the last seventh held out for testing). ``data.max_rows`` limits
the window of lines read.

Synthetic data (``--set data.synthetic=true`` or ``--synthetic``): :class:`~bayestensor.data.SyntheticClicks`
with the true Kaggle cardinalities (26 tables, 33.8M rows). A dense DLRM would need about
4.3e9 embedding parameters; with the 5 largest tables tensorized the model has about 73M (the 21
small plain tables) and trains on a 2-core machine. ``data.train_batches`` batches of
``train.batch_size`` rows make one epoch, each epoch fresh rows. The teacher's tables are planted
tensor trains (``data.teacher = "tt"``, TT rank ``data.teacher_tt_rank`` over the student's row
modes), so there are ranks to find; ``data.teacher = "hashed"`` gives every id independent
features instead, which no low-rank table can compress.

The model is :class:`~.dlrm_model.DLRM`; the loop is the clicks task of :mod:`.clicks`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from ..data import KAGGLE_CARDINALITIES, ClickBatch, CriteoKaggle, SyntheticClicks
from .config import ConfigError, RunConfig
from .distributed import current
from .dlrm_model import DLRM
from .models import tensor_kwargs
from .registry import Experiment, register_experiment


def parse_sizes(text: str, key: str) -> list[int]:
    """``"512-256-128"`` → ``[512, 256, 128]``, with a clear error naming ``key``."""
    try:
        sizes = [int(s) for s in text.split("-")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"{key}: expected positive layer sizes joined by '-', e.g. '512-256-128', got {text!r}")
    return sizes


def cardinalities(cfg: RunConfig) -> list[int]:
    """The table sizes: Kaggle's, capped at ``data.max_cardinality`` when that is set."""
    cap = cfg.data.max_cardinality
    return [min(c, cap) if cap > 0 else c for c in KAGGLE_CARDINALITIES]


class ClickStream:
    """Training batches for one process, ``steps`` per epoch, the same count on every process.

    Synthetic data give fresh rows every epoch (batch ``epoch · train_batches + i``); a file is
    re-read from its start.
    """

    def __init__(self, source: SyntheticClicks | CriteoKaggle, steps: int, rank: int, world_size: int) -> None:
        self.source, self.steps, self.rank, self.world_size = source, steps, rank, world_size
        self.batch_size = source.batch_size

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int) -> Iterator[ClickBatch]:
        """The batches of ``epoch`` for this process."""
        if isinstance(self.source, SyntheticClicks):
            base = epoch * self.source.num_batches
            return (self.source.batch(base + i * self.world_size + self.rank) for i in range(self.steps))
        return itertools.islice(iter(self.source), self.steps)


def _data(cfg: RunConfig) -> tuple[ClickStream, list[ClickBatch] | CriteoKaggle, SyntheticClicks | None]:
    ctx = current()
    cards = cardinalities(cfg)
    bs = cfg.train.batch_size
    if cfg.data.validation and not cfg.data.synthetic:
        raise ConfigError(
            "criteo-dlrm: data.validation holds out synthetic rows only (--synthetic); a held-out part of "
            f"train.txt is not implemented, got data.validation={cfg.data.validation}"
        )
    if cfg.data.synthetic:
        teacher = {
            "seed": cfg.train.seed,
            "cardinalities": cards,
            "teacher": cfg.data.teacher,
            "teacher_tt_rank": cfg.data.teacher_tt_rank,
            "teacher_modes": cfg.model.table_modes,
        }
        train = SyntheticClicks(cfg.data.train_batches, bs, rank=ctx.rank, world_size=ctx.world_size, **teacher)
        test = SyntheticClicks(cfg.data.test_batches, bs, split="test", **teacher)
        held = -(-cfg.data.validation // bs)  # whole batches of fresh rows from the same teacher
        validation = SyntheticClicks(held, bs, split="validation", **teacher) if held else None
        return ClickStream(train, cfg.data.train_batches // ctx.world_size, ctx.rank, ctx.world_size), test, validation
    if not cfg.data.data_dir:
        raise ConfigError("criteo-dlrm needs --data-dir (the folder with Criteo Kaggle's train.txt) or --synthetic")
    max_rows = cfg.data.max_rows or None
    full = CriteoKaggle(cfg.data.data_dir, bs, max_rows=max_rows, cardinalities=cards, drop_last=True)
    train = CriteoKaggle(
        cfg.data.data_dir,
        bs,
        max_rows=max_rows,
        cardinalities=cards,
        drop_last=True,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    test = CriteoKaggle(cfg.data.data_dir, bs, split="test", max_rows=max_rows, cardinalities=cards)
    steps = len(full) // ctx.world_size
    if steps == 0:
        raise ConfigError(
            f"criteo-dlrm: the training split has {full.num_rows} rows, fewer than one batch per process "
            f"({bs} x {ctx.world_size}); lower --batch-size or raise data.max_rows"
        )
    limited = list(itertools.islice(iter(test), cfg.data.test_batches)) if cfg.data.test_batches else test
    return ClickStream(train, steps, ctx.rank, ctx.world_size), limited, None


#: The dense twin (``--dense``) is refused when its tables alone would need more memory than this.
MAX_DENSE_TABLE_BYTES = 8 << 30


def _model(cfg: RunConfig) -> DLRM:
    m = cfg.model
    cards = cardinalities(cfg)
    if m.dense and sum(cards) * m.embedding_dim * 4 > MAX_DENSE_TABLE_BYTES:
        need = sum(cards) * m.embedding_dim * 4 / 2**30
        raise ConfigError(
            f"criteo-dlrm --dense: {sum(cards):,} table rows x {m.embedding_dim} floats need {need:.1f} GiB "
            f"(plus twice that for Adam), expected at most {MAX_DENSE_TABLE_BYTES / 2**30:.0f} GiB; cap the tables "
            "with --set data.max_cardinality=N for a dense baseline"
        )
    return DLRM(
        cards,
        embedding_dim=m.embedding_dim,
        bottom=parse_sizes(m.bottom_mlp, "model.bottom_mlp"),
        top=parse_sizes(m.top_mlp, "model.top_mlp"),
        tensorized=m.tensorized_tables,
        table_modes=m.table_modes,
        tensor=tensor_kwargs(m),
    )


def _defaults(cfg: RunConfig) -> None:
    cfg.model.format, cfg.model.max_rank = "tt", 16
    # 8 epochs of 200 batches (1,600 steps): about 7-10 minutes on 2 CPU cores; the paper's lr
    cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.train.threads = 8, 2048, 5e-3, 1
    cfg.train.kl_weight, cfg.train.no_kl_epochs, cfg.train.warmup_epochs = 1.0, 0, 1
    cfg.train.prune_start, cfg.train.prune_every = 1, 1


def _smoke(cfg: RunConfig) -> None:
    cfg.model.embedding_dim, cfg.model.bottom_mlp, cfg.model.top_mlp, cfg.model.max_rank = 8, "16-8", "16-1", 3
    cfg.train.epochs, cfg.train.batch_size, cfg.train.prune_start, cfg.train.prune_every = 2, 64, 0, 1
    cfg.data.train_batches, cfg.data.test_batches = 4, 2


CRITEO_DLRM = register_experiment(
    Experiment(
        name="criteo-dlrm",
        description="DLRM (emb 128, MLPs 13-512-256-128 / 512-256-1, dot interactions), 5 largest tables TT",
        data="Criteo Kaggle train.txt in --data-dir, or --synthetic (true cardinalities, 33.8M rows)",
        defaults=_defaults,
        load_data=_data,
        build_model=_model,
        smoke=_smoke,
        task="clicks",
    )
)
